"""Spec validation: every error kind names the file, the dotted field path and says what was expected."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest

import harness
from harness import Issue, SpecError, load_spec
from harness.spec import apply_overrides, field_paths, parse_overrides, spec_from_dict

REPO = Path(__file__).resolve().parents[1]


def _issues(exc_info: pytest.ExceptionInfo[SpecError]) -> dict[str, str]:
    """path -> message of every issue in the raised SpecError."""
    return {i.path: i.message for i in exc_info.value.issues}


def _load_err(tmp_path: Path, write_spec, spec: dict, overrides: list[str] | None = None) -> pytest.ExceptionInfo[SpecError]:
    path = write_spec(tmp_path, spec)
    with pytest.raises(SpecError) as exc_info:
        load_spec(path, overrides)
    return exc_info


# ----------------------------------------------------------------------------------------------------------- basics


def test_tiny_spec_is_valid(tmp_path, tiny_spec_dict, write_spec):
    spec = load_spec(write_spec(tmp_path, tiny_spec_dict))
    assert isinstance(spec, harness.Spec)
    assert spec.model.d_model == 16 and spec.train.max_steps == 6 and spec.train.epochs is None
    assert spec.data.tokenizer.kind == "char"
    assert spec.train.eval.every_steps == 3


def test_issue_names_the_file(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["train"]["optimizer"]["lr"] = -1.0
    path = write_spec(tmp_path, tiny_spec_dict, name="my-spec.yaml")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    (issue,) = exc_info.value.issues
    assert isinstance(issue, Issue)
    assert issue.file == str(path)
    assert issue.path == "train.optimizer.lr"
    assert "my-spec.yaml" in str(exc_info.value)
    assert "train.optimizer.lr" in str(exc_info.value)


# ----------------------------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("where", "key", "path", "suggestion"),
    [
        (("data",), "seqlen", "data.seqlen", "data.seq_len"),
        (("model",), "n_head", "model.n_head", "model.n_heads"),
        (("train",), "batchsize", "train.batchsize", "train.batch_size"),
        (("train", "optimizer"), "lrr", "train.optimizer.lrr", "train.optimizer.lr"),
        (("train", "eval"), "every_step", "train.eval.every_step", "train.eval.every_steps"),
        (("tracking",), "experimnet", "tracking.experimnet", "tracking.experiment"),
    ],
)
def test_unknown_key_with_suggestion(tmp_path, tiny_spec_dict, write_spec, where, key, path, suggestion):
    node = tiny_spec_dict
    for part in where:
        node = node[part]
    node[key] = 1
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == [path]
    assert issues[path] == f"unknown field; did you mean {suggestion}?"


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["model"]["zzzqqq"] = 3
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert issues == {"model.zzzqqq": "unknown field"}


def test_unknown_top_level_key_is_reported(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["colour"] = "blue"
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["colour"]
    assert issues["colour"].startswith("unknown field")


def test_unknown_top_level_key_suggests_close_name(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["tracking"] = {}
    tiny_spec_dict["trackin"] = tiny_spec_dict.pop("tracking")
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert issues["trackin"] == "unknown field; did you mean tracking?"


def test_unknown_sweep_param_path_suggests(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["sweep"] = {"params": {"train.optimizer.lrr": [1e-3, 1e-2]}}
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert "sweep.params.train.optimizer.lrr" in issues
    assert "did you mean train.optimizer.lr?" in issues["sweep.params.train.optimizer.lrr"]


# ----------------------------------------------------------------------------------------------------------- types and ranges


@pytest.mark.parametrize(
    ("where", "key", "value", "path", "needle"),
    [
        (("model",), "d_model", "big", "model.d_model", "valid integer"),
        (("train",), "batch_size", [4], "train.batch_size", "valid integer"),
        (("model",), "dropout", "lots", "model.dropout", "valid number"),
        (("data",), "sampling", "sliding", "data.sampling", "'windows', 'random' or 'documents'"),
        (("train", "optimizer"), "name", "adamm", "train.optimizer.name", "'adamw', 'adam' or 'sgd'"),
        (("train", "optimizer"), "implementation", "fast", "train.optimizer.implementation", "'auto', 'foreach' or 'fused'"),
        (("data",), "tokenizer", "bpe", "data.tokenizer.kind", "'char' or 'tiktoken'"),
    ],
)
def test_wrong_type(tmp_path, tiny_spec_dict, write_spec, where, key, value, path, needle):
    node = tiny_spec_dict
    for part in where:
        node = node[part]
    node[key] = value
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == [path]
    assert needle in issues[path]
    assert repr(value) in issues[path]  # the offending value is shown


@pytest.mark.parametrize("lr", [0, 0.0, -1e-3])
def test_lr_must_be_positive(tmp_path, tiny_spec_dict, write_spec, lr):
    tiny_spec_dict["train"]["optimizer"]["lr"] = lr
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["train.optimizer.lr"]
    assert "greater than 0" in issues["train.optimizer.lr"]


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("train", "optimizer"), "lr", math.nan),
        (("train", "optimizer"), "lr", math.inf),
        (("data",), "val_fraction", math.nan),
        (("train",), "clip_grad_norm", math.inf),
        (("model",), "dropout", -math.inf),
    ],
)
def test_nan_and_inf_are_refused(tmp_path, tiny_spec_dict, write_spec, where, key, value):
    node = tiny_spec_dict
    for part in where:
        node = node[part]
    node[key] = value
    path = ".".join(where + (key,))
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert path in issues
    assert "finite number" in issues[path]


def test_nan_from_yaml_text(tmp_path, tiny_spec_dict, write_spec):
    # YAML's own spelling (.nan / .inf) must be caught too, not only Python floats.
    path = write_spec(tmp_path, tiny_spec_dict)
    path.write_text(path.read_text().replace("lr: 0.001", "lr: .nan"))
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    assert "finite number" in _issues(exc_info)["train.optimizer.lr"]


def test_d_model_divisible_by_n_heads(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["model"].update(d_model=18, n_heads=4)
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["model.n_heads"]
    msg = issues["model.n_heads"]
    assert "divisible" in msg and "d_model" in msg and "18" in msg and "4" in msg


def test_min_lr_above_lr(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["train"]["schedule"] = {"name": "warmup_cosine", "warmup_steps": 2, "min_lr": 0.1}
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["train.schedule.min_lr"]
    assert "must not exceed optimizer.lr" in issues["train.schedule.min_lr"]


# ----------------------------------------------------------------------------------------------------------- data-dependent checks


def test_seq_len_longer_than_train_split(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["seq_len"] = 5000
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.seq_len"]
    msg = issues["data.seq_len"]
    assert "seq_len 5000 needs at least 5001 training tokens" in msg
    assert "the train split has" in msg


def test_batch_size_larger_than_windows(tmp_path, tiny_spec_dict, write_spec, tiny_text):
    tiny_spec_dict["train"]["batch_size"] = 100_000
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert "train.batch_size" in issues
    n_train = len(tiny_text) - round(len(tiny_text) * 0.2)
    windows = n_train - 16
    assert issues["train.batch_size"] == (
        f"batch_size 100000 is larger than the {windows} training windows (an epoch would have no full batch)"
    )


def test_val_split_too_small_for_one_example(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["val_fraction"] = 0.004  # ~9 tokens < seq_len + 1
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.val_fraction"]
    assert "too small for one example of 17 tokens" in issues["data.val_fraction"]


def test_val_split_too_small_for_one_batch(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["val_fraction"] = 0.02  # ~46 tokens: 30 windows
    tiny_spec_dict["train"]["batch_size"] = 40
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.val_fraction"]
    assert "fewer than one batch of 40" in issues["data.val_fraction"]


def test_missing_corpus_is_a_spec_issue(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["corpus"] = str(tmp_path / "nope.txt")
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.corpus"]
    assert "not found" in issues["data.corpus"]


def test_relative_corpus_resolves_against_spec_folder(tmp_path, tiny_spec_dict, write_spec, tiny_corpus, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    (sub / "local.txt").write_text(tiny_corpus.read_text(encoding="utf-8"), encoding="utf-8")
    tiny_spec_dict["data"]["corpus"] = "local.txt"
    path = write_spec(sub, tiny_spec_dict)
    monkeypatch.chdir(tmp_path)  # the cwd has no local.txt
    spec = load_spec(path)
    assert Path(spec.data.corpus) == (sub / "local.txt").resolve()


# ----------------------------------------------------------------------------------------------------------- epochs / max_steps


def test_both_epochs_and_max_steps(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["train"]["epochs"] = 2
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["train.max_steps"]
    assert "exactly one of train.epochs or train.max_steps" in issues["train.max_steps"]
    assert "not both" in issues["train.max_steps"]


def test_neither_epochs_nor_max_steps(tmp_path, tiny_spec_dict, write_spec):
    del tiny_spec_dict["train"]["max_steps"]
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["train.max_steps"]
    assert "exactly one of train.epochs or train.max_steps" in issues["train.max_steps"]
    assert "not both" not in issues["train.max_steps"]


def test_every_epochs_needs_epochs(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["train"]["eval"] = {"every_epochs": 1}
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["train.eval.every_epochs"]
    assert "needs train.epochs" in issues["train.eval.every_epochs"]


def test_missing_required_sections(tmp_path, write_spec):
    issues = _issues(_load_err(tmp_path, write_spec, {"name": "x"}))
    for section in ("data", "model", "train"):
        assert issues[section].startswith("required field is missing")  # model adds when it may be left out


# ----------------------------------------------------------------------------------------------------------- many errors at once


def test_multiple_errors_collected_in_one_raise(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["train"]["optimizer"]["lr"] = -1
    tiny_spec_dict["model"]["d_model"] = 15
    tiny_spec_dict["data"]["seqlen"] = 3
    tiny_spec_dict["model"]["dropout"] = math.nan
    exc_info = _load_err(tmp_path, write_spec, tiny_spec_dict)
    paths = {i.path for i in exc_info.value.issues}
    # the cross-field d_model/n_heads check still runs when another model field is invalid
    assert paths == {"train.optimizer.lr", "data.seqlen", "model.dropout", "model.n_heads"}
    text = str(exc_info.value)
    assert text.startswith(f"{len(exc_info.value.issues)} problems in {tmp_path / 'spec.yaml'}:")
    assert all(i.file == str(tmp_path / "spec.yaml") for i in exc_info.value.issues)


# ----------------------------------------------------------------------------------------------------------- --set overrides


def test_overrides_parse_yaml_scalars():
    parsed = dict(parse_overrides(["a=1", "b=1.5e-3", "c=true", "d=null", "e=hello", "f=[1, 2]", "g='7'", "h="]))
    assert parsed == {"a": 1, "b": 1.5e-3, "c": True, "d": None, "e": "hello", "f": [1, 2], "g": "7", "h": None}
    assert type(parsed["a"]) is int and type(parsed["b"]) is float


def test_overrides_apply(tmp_path, tiny_spec_dict, write_spec):
    path = write_spec(tmp_path, tiny_spec_dict)
    spec = load_spec(
        path,
        ["train.optimizer.lr=0.5", "model.dropout=0.25", "train.clip_grad_norm=1e-3", "model.tie_weights=true",
         "tracking.tags.owner=me", "data.seq_len=12"],
    )
    assert spec.train.optimizer.lr == 0.5
    assert spec.data.seq_len == 12
    assert spec.model.dropout == 0.25
    assert spec.train.clip_grad_norm == 1e-3
    assert spec.model.tie_weights is True
    assert spec.tracking.tags == {"owner": "me"}
    # the file itself is untouched
    assert load_spec(path).train.optimizer.lr == 1e-3


def test_override_into_tokenizer_shorthand(tmp_path, tiny_spec_dict, write_spec):
    # data.tokenizer is a shorthand string in the file; an override of a sub-field must still reach it
    tiny_spec_dict["data"]["tokenizer"] = "tiktoken:cl100k_base"
    spec = load_spec(write_spec(tmp_path, tiny_spec_dict), ["data.tokenizer.encoding=o200k_base"])
    assert (spec.data.tokenizer.kind, spec.data.tokenizer.encoding) == ("tiktoken", "o200k_base")


@pytest.mark.parametrize(
    ("override", "path", "suggestion"),
    [
        ("train.optimizer.lrr=0.1", "train.optimizer.lrr", "train.optimizer.lr"),
        ("trian.max_steps=3", "trian.max_steps", "train.max_steps"),
        ("model.nlayers=2", "model.nlayers", "model.n_layers"),
    ],
)
def test_override_unknown_path_suggests(tmp_path, tiny_spec_dict, write_spec, override, path, suggestion):
    exc_info = _load_err(tmp_path, write_spec, tiny_spec_dict, [override])
    (issue,) = exc_info.value.issues
    assert issue.file == "--set"
    assert issue.path == path
    assert issue.message == f"unknown field path '{path}'; did you mean {suggestion}?"


def test_override_without_equals(tmp_path, tiny_spec_dict, write_spec):
    exc_info = _load_err(tmp_path, write_spec, tiny_spec_dict, ["train.optimizer.lr"])
    (issue,) = exc_info.value.issues
    assert (issue.file, issue.path) == ("--set", "train.optimizer.lr")
    assert "expected key=value" in issue.message


def test_override_value_is_validated(tmp_path, tiny_spec_dict, write_spec):
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict, ["train.optimizer.lr=-2"]))
    assert "greater than 0" in issues["train.optimizer.lr"]


def test_apply_overrides_does_not_mutate_input(tiny_spec_dict):
    before = repr(tiny_spec_dict)
    out = apply_overrides(tiny_spec_dict, [("model.n_layers", 3)])
    assert out["model"]["n_layers"] == 3
    assert repr(tiny_spec_dict) == before


def test_field_paths_cover_nested_sections():
    paths = field_paths()
    for p in ("train.optimizer.lr", "train.schedule.warmup_steps", "data.tokenizer.kind", "train.eval.every_steps",
              "train.early_stopping.patience", "model.d_model"):
        assert p in paths


# ----------------------------------------------------------------------------------------------------------- tokenizer shorthand


def test_tokenizer_char_shorthand(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["tokenizer"] = "char"
    a = load_spec(write_spec(tmp_path, tiny_spec_dict, name="a.yaml"))
    tiny_spec_dict["data"]["tokenizer"] = {"kind": "char"}
    b = load_spec(write_spec(tmp_path, tiny_spec_dict, name="b.yaml"))
    assert a.data.tokenizer == b.data.tokenizer
    assert a.data.tokenizer.kind == "char" and a.data.tokenizer.encoding is None and a.data.tokenizer.compact is False


def test_tokenizer_tiktoken_shorthand():
    from harness.spec import TokenizerSpec

    tok = TokenizerSpec.model_validate("tiktoken:cl100k_base")
    assert (tok.kind, tok.encoding) == ("tiktoken", "cl100k_base")


def test_char_tokenizer_refuses_tiktoken_options(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["tokenizer"] = {"kind": "char", "compact": True}
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.tokenizer.kind"]
    assert "only apply to kind: tiktoken" in issues["data.tokenizer.kind"]


def test_tiktoken_needs_encoding(tmp_path, tiny_spec_dict, write_spec):
    tiny_spec_dict["data"]["tokenizer"] = {"kind": "tiktoken"}
    issues = _issues(_load_err(tmp_path, write_spec, tiny_spec_dict))
    assert list(issues) == ["data.tokenizer.encoding"]
    assert "cl100k_base" in issues["data.tokenizer.encoding"]


# ----------------------------------------------------------------------------------------------------------- YAML safety


def test_tab_indented_yaml(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("name: x\ndata:\n\tcorpus: foo\n", encoding="utf-8")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    (issue,) = exc_info.value.issues
    assert issue.file == str(path)
    assert issue.path == ""
    assert "line 3" in issue.message
    assert "spaces, not tabs" in issue.message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("", "empty file"), ("just words\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    (issue,) = exc_info.value.issues
    assert issue.file == str(path) and issue.path == ""
    assert issue.message == f"expected a mapping of sections (name, seed, data, model, train, tracking), got {kind}"


def test_top_level_list_with_overrides_still_reports_the_list(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n", encoding="utf-8")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path, ["model.d_model=8"])
    assert "got list" in exc_info.value.issues[0].message


@pytest.fixture
def no_model(monkeypatch):
    """Any construction of the GPT fails the test: a refused spec must be refused by arithmetic, not by allocating."""
    import harness.model

    def boom(*a, **k):  # pragma: no cover - reached only if a model were built
        raise AssertionError("a GPT was constructed")

    monkeypatch.setattr(harness.model.GPT, "__init__", boom)


def test_alias_bomb_refused_before_expansion(tmp_path, monkeypatch):
    from harness.spec.safe_yaml import MAX_YAML_ALIASES, _SafeLoader

    def construct(*a, **k):  # pragma: no cover - reached only if the bomb were expanded into Python objects
        raise AssertionError("the YAML document was constructed")

    monkeypatch.setattr(_SafeLoader, "construct_document", construct)
    # billion laughs: 12 levels of 12 references each, ~10**13 strings if expanded
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 13):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 12) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    (issue,) = exc_info.value.issues
    assert issue.file == str(path)
    assert issue.message == f"invalid YAML: more than {MAX_YAML_ALIASES} YAML aliases; refusing a possible alias bomb"


def test_a_few_aliases_are_fine(tmp_path, tiny_spec_dict, write_spec):
    path = write_spec(tmp_path, tiny_spec_dict)
    text = path.read_text().replace("  batch_size: 4", "  batch_size: &bs 4") + "x_bs: *bs\n"
    path.write_text(text)
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    assert _issues(exc_info) == {"x_bs": "unknown field"}  # parsed fine; only the extra key is wrong


def test_python_object_tag_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    assert not marker.exists()
    (issue,) = exc_info.value.issues
    assert issue.file == str(path)
    assert "python/object/apply:os.system" in issue.message
    assert "invalid YAML" in issue.message


def test_spec_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    assert "not UTF-8" in exc_info.value.issues[0].message


def test_spec_file_missing(tmp_path):
    with pytest.raises(SpecError) as exc_info:
        load_spec(tmp_path / "absent.yaml")
    assert "cannot read spec file" in exc_info.value.issues[0].message


# ----------------------------------------------------------------------------------------------------------- huge models


def test_huge_d_model_refused_without_allocating(tmp_path, tiny_spec_dict, write_spec, no_model):
    tiny_spec_dict["model"]["d_model"] = 10**9
    path = write_spec(tmp_path, tiny_spec_dict)
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    issues = _issues(exc_info)
    assert list(issues) == ["model.d_model"]
    assert "less than or equal to" in issues["model.d_model"]


def test_parameter_cap(tmp_path, tiny_spec_dict, write_spec, no_model):
    # each field inside its own bounds, but together far beyond what can be allocated
    tiny_spec_dict["model"].update(d_model=65_536, n_heads=1, n_layers=1024, d_ff=1_048_576)
    path = write_spec(tmp_path, tiny_spec_dict)
    with pytest.raises(SpecError) as exc_info:
        load_spec(path)
    issues = _issues(exc_info)
    assert list(issues) == ["model"]
    assert "parameters" in issues["model"] and "at most 2e+10" in issues["model"]


# ----------------------------------------------------------------------------------------------------------- frozen


def test_spec_is_frozen(tmp_path, tiny_spec_dict, write_spec):
    spec = load_spec(write_spec(tmp_path, tiny_spec_dict))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.train.batch_size = 8  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.model = spec.model  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.train.optimizer.lr = 1.0  # type: ignore[misc]
    assert spec.train.batch_size == 4 and spec.train.optimizer.lr == 1e-3


def test_spec_from_dict_does_not_mutate_input(tiny_spec_dict):
    tiny_spec_dict["data"]["tokenizer"] = "char"
    before = repr(tiny_spec_dict)
    spec_from_dict(tiny_spec_dict)
    assert repr(tiny_spec_dict) == before


# ----------------------------------------------------------------------------------------------------------- shipped experiments


def _experiment_files() -> list[Path]:
    return sorted((REPO / "experiments").glob("*.yaml"))


def test_every_experiment_validates():
    files = _experiment_files()
    if not files:
        pytest.skip("experiments/ has no *.yaml files")
    problems = []
    for f in files:
        try:
            load_spec(f)
        except SpecError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overrides", [[], ["sweep.repeats=3"], ["sweep.seeds=[5, 2]"]], ids=["as-shipped", "repeats", "seeds"])
def test_every_resolved_spec_loads_back_as_itself(overrides):
    """The resolved spec (what workers receive and spec.yaml stores) validates again to an equal spec: resume, workers
    and init.from all read it back. A seed list once resolved to repeats: 1 beside the seeds, which the loader refuses."""
    from harness.spec import spec_to_dict

    checked = 0
    for f in _experiment_files():
        if overrides and load_spec(f).sweep is None:
            continue
        try:
            spec = load_spec(f, overrides or None)
        except SpecError:
            continue  # a spec whose pruner cannot take repeats: refused on load, covered by the bad-input tests
        assert spec_from_dict(spec_to_dict(spec), file=str(f)) == spec, f
        checked += 1
    assert checked >= 2
