"""Hostile specs: every one exits 2 with a message naming the file (or --set) and the field, no traceback, and creates
nothing.

One table drives the test. Each case gets its own folder (spec, corpora, MLflow URI, staging folder, cwd for
studies/), and ``harness run`` is called in-process through the real CLI entry point (``harness.cli.main``), with the
GPT's constructor replaced by one that fails: no case may get as far as building a model. A few cases are repeated as
real subprocesses to prove the process exit code and stderr.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import rel_helpers as H
import yaml
from conftest import make_spec, tree, write_spec

from harness.cli import main
from harness.spec.safe_yaml import MAX_YAML_NODES, _SafeLoader

# "Billion laughs": 73 aliases, well under any alias count limit, that expand to 9**9 values in `name`.
BOMB = "x0: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"x{n + 1}: &{c} [{', '.join(['*' + p] * 9)}]\n" for n, (p, c) in enumerate(zip("abcdefgh", "bcdefghi"))
) + "name: *i\n"


def base() -> dict[str, Any]:
    """A valid spec next to its corpus (tiny.txt in the case's folder); "seed: 1" and "lr: 0.001" are edited as text below."""
    return make_spec("tiny.txt", name="hostile", seed=1, steps=4, train={"optimizer": {"lr": 1e-3}})


def sweep(params: dict, **kw: Any) -> Callable[[dict], None]:
    return lambda d: d.update(sweep={"sampler": "grid", "params": params, **kw})


def at(path: str, value: Any) -> Callable[[dict], None]:
    """Set a dotted path in the spec dict (creating mappings on the way)."""

    def mutate(d: dict) -> None:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    return mutate


@dataclass
class Case:
    name: str
    spec: Callable[[dict], None] | str | bytes | None  # mutate the base dict, or the raw file content; None: no file at all
    path: str | None  # the dotted field path the message must name (None: a problem of the whole file)
    says: str = ""  # and a phrase saying what is wrong
    args: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    set_error: bool = False  # the --set option itself is bad: the message blames --set, not the file


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4

CASES = [
    # --- malformed YAML, wrong top level, unsafe YAML
    Case("tabs", "name: hostile\nmodel:\n\td_model: 16\n", None, "not tabs"),
    Case("unclosed-bracket", "name: hostile\nmodel: {d_model: 16, n_heads: 2\n", None, "invalid YAML (line"),
    Case("unclosed-quote", 'name: "hostile\nseed: 1\n', None, "invalid YAML"),
    Case("two-documents", "name: a\n---\nname: b\n", None, "invalid YAML"),
    Case("top-level-list", "- name: hostile\n- seed: 1\n", None, "expected a mapping"),
    Case("top-level-scalar", "just some words\n", None, "expected a mapping"),
    Case("empty-file", "", None, "empty file"),
    Case("duplicate-key", yaml.safe_dump(base(), sort_keys=False).replace("    lr: 0.001\n", "    lr: 0.001\n    lr: 10.0\n"),
         "train.optimizer.lr", "duplicate key"),
    Case("python-object-tag", "!!python/object/apply:os.system ['touch PWNED']\n", None, "could not determine a constructor"),
    Case("python-tag-in-field", yaml.safe_dump(base()).replace("seed: 1", "seed: !!python/object/apply:os.system ['touch PWNED']"),
         None, "python/object/apply"),
    Case("alias-bomb", BOMB, None, "alias bomb"),
    Case("recursive-alias", "name: &n [*n]\n", None, "recursive structure"),
    Case("deep-nesting", "name: " + "[" * 20000 + "]" * 20000 + "\n", None, "nested too deeply"),
    Case("not-utf8-spec", b"name: caf\xe9\n", None, "not UTF-8"),
    Case("spec-file-missing", None, None, "cannot read spec file"),
    Case("oversized-spec", "#" + "x" * 1_100_000 + "\n", None, "a spec is at most"),
    # --- unknown keys at every level
    Case("unknown-top", at("colour", "red"), "colour", "unknown field"),
    Case("unknown-data", at("data.shuffle", True), "data.shuffle", "unknown field"),
    Case("unknown-tokenizer-key", at("data.tokenizer", {"kind": "tiktoken", "encodng": "cl100k_base"}), "data.tokenizer.encodng",
         "did you mean data.tokenizer.encoding"),
    Case("unknown-model", at("model.heads", 2), "model.heads", "did you mean model.n_heads"),
    Case("unknown-optimizer", at("train.optimizer.momentumm", 0.9), "train.optimizer.momentumm", "did you mean train.optimizer.momentum"),
    Case("unknown-schedule", at("train.schedule.warmup", 10), "train.schedule.warmup", "unknown field"),
    Case("unknown-eval", at("train.eval.every", 2), "train.eval.every", "unknown field"),
    Case("unknown-early-stopping", at("train.early_stopping", {"patiense": 2}), "train.early_stopping.patiense", "unknown field"),
    Case("unknown-checkpoint", at("train.checkpoint.every", 2), "train.checkpoint.every", "unknown field"),
    Case("unknown-tracking", at("tracking.experiement", "x"), "tracking.experiement", "did you mean tracking.experiment"),
    Case("unknown-sweep", sweep({"seed": [1, 2]}, samplr="grid"), "sweep.samplr", "did you mean sweep.sampler"),
    Case("unknown-objective", sweep({"seed": [1, 2]}, objective={"metrc": "val/loss"}), "sweep.objective.metrc", "unknown field"),
    Case("unknown-range-key", sweep({"train.optimizer.lr": {"flaot": [1e-4, 1e-2]}}, sampler="tpe", n_trials=2),
         "sweep.params.train.optimizer.lr.flaot", "did you mean float"),
    # --- wrong types
    Case("type-d_model-str", at("model.d_model", "sixteen"), "model.d_model", "valid integer"),
    Case("type-batch-list", at("train.batch_size", [4]), "train.batch_size", "valid integer"),
    Case("type-section-str", at("data", "tiny.txt"), "data", "valid dictionary"),
    Case("type-lr-str", at("train.optimizer.lr", "fast"), "train.optimizer.lr", "valid number"),
    Case("type-name-int", at("name", 42), "name", "valid string"),
    Case("type-seed-float", at("seed", 1.5), "seed", "valid integer"),
    Case("type-bool", at("model.tie_weights", "maybe"), "model.tie_weights", "valid boolean"),
    Case("type-tag-value", at("tracking.tags", {"owner": 7}), "tracking.tags.owner", "valid string"),
    # --- NaN, inf, negative, zero, out of range, cross-field
    Case("nan-lr", at("train.optimizer.lr", float("nan")), "train.optimizer.lr", "finite"),
    Case("inf-clip", at("train.clip_grad_norm", float("inf")), "train.clip_grad_norm", "finite"),
    Case("negative-steps", at("train.max_steps", -5), "train.max_steps", "greater than or equal to 1"),
    Case("negative-val-fraction", at("data.val_fraction", -0.1), "data.val_fraction", "greater than or equal to 0"),
    Case("zero-lr", at("train.optimizer.lr", 0), "train.optimizer.lr", "greater than 0"),
    Case("negative-seed", at("seed", -1), "seed", "greater than or equal to 0"),
    Case("dropout-one", at("model.dropout", 1.0), "model.dropout", "less than 1"),
    Case("bad-name", at("name", "my run!"), "name", "pattern"),
    Case("heads-not-dividing", at("model.n_heads", 3), "model.n_heads", "must divide d_model"),
    Case("epochs-and-steps", at("train.epochs", 2), "train.max_steps", "exactly one of"),
    Case("min-lr-above-lr", at("train.schedule", {"name": "linear", "min_lr": 1.0}), "train.schedule.min_lr", "must not exceed"),
    # --- huge values: refused before anything is allocated
    Case("d_model-1e9", at("model.d_model", 10**9), "model.d_model", "less than or equal to"),
    Case("params-2e13", at("model", {"d_model": 65536, "n_heads": 1, "n_layers": 1024, "d_ff": 1048576}), "model", "parameters"),
    Case("batch-bigger-than-corpus", at("train.batch_size", 1_000_000), "train.batch_size", "larger than"),
    # --- the corpus
    Case("corpus-missing", at("data.corpus", "nowhere.txt"), "data.corpus", "not found"),
    Case("corpus-empty", at("data.corpus", "empty.txt"), "data.corpus", "is empty", files={"empty.txt": b""}),
    Case("corpus-whitespace", at("data.corpus", "blank.txt"), "data.corpus", "is empty", files={"blank.txt": b"  \n\n\t \n"}),
    Case("corpus-not-utf8", at("data.corpus", "latin1.txt"), "data.corpus", "not UTF-8", files={"latin1.txt": "café crème\n".encode("latin-1") * 50}),
    Case("corpus-binary", at("data.corpus", "image.png"), "data.corpus", "binary", files={"image.png": PNG}),
    # a folder is a corpus of its .txt files (issue 26); one without any is refused
    Case("corpus-folder-without-text", at("data.corpus", "notes"), "data.corpus", "has no .txt", files={"notes/readme.md": b"# notes\n"}),
    Case("corpus-too-short", at("data.corpus", "short.txt"), "data.seq_len", "needs at least 17", files={"short.txt": b"hello world\n"}),
    Case("unknown-shipped-corpus", at("data.corpus", "shakespeare/hamlett"), "data.corpus", "shakespeare"),
    Case("unknown-tokenizer", at("data.tokenizer", "wordpiece"), "data.tokenizer.kind", "'char' or 'tiktoken'"),
    Case("unknown-encoding", at("data.tokenizer", "tiktoken:gpt5_base"), "data.tokenizer.encoding", "not available offline"),
    # --- sweeps
    Case("swept-path-missing", sweep({"train.optimizer.lrr": [1e-3]}), "sweep.params.train.optimizer.lrr", "did you mean train.optimizer.lr"),
    Case("empty-grid", sweep({"train.optimizer.lr": []}), "sweep.params.train.optimizer.lr", "empty grid"),
    Case("duplicate-grid", sweep({"seed": [1, 1]}), "sweep.params.seed", "duplicate grid values"),
    Case("inverted-range", sweep({"train.optimizer.lr": {"float": [1e-2, 1e-4]}}, sampler="tpe", n_trials=2),
         "sweep.params.train.optimizer.lr", "inverted"),
    Case("log-range-low-0", sweep({"train.optimizer.lr": {"float": [0.0, 1e-2], "log": True}}, sampler="tpe", n_trials=2),
         "sweep.params.train.optimizer.lr", "log range needs low > 0"),
    Case("bad-grid-value", sweep({"train.batch_size": [4, 100000]}), "sweep.params.train.batch_size", "makes an invalid run"),
    Case("range-on-grid", sweep({"train.optimizer.lr": {"float": [1e-4, 1e-2]}}), "sweep.params.train.optimizer.lr", "needs a list"),
    Case("tpe-without-n_trials", sweep({"train.optimizer.lr": {"float": [1e-4, 1e-2]}}, sampler="tpe"), "sweep.n_trials", "needs n_trials"),
    Case("zero-workers", sweep({"seed": [1, 2]}, workers=0), "sweep.workers", "greater than or equal to 1"),
    # --- repeated seeds
    Case("repeats-zero-flag", at("seed", 1), "sweep.repeats", "greater than or equal to 1", args=("--repeats", "0")),
    Case("repeats-zero", sweep({"train.optimizer.lr": [1e-3, 2e-3]}, repeats=0), "sweep.repeats", "greater than or equal to 1"),
    Case("repeats-huge", at("seed", 1), "sweep.repeats", "less than or equal to 1000", args=("--repeats", "100000")),
    Case("seeds-empty", sweep({"train.optimizer.lr": [1e-3]}, seeds=[]), "sweep.seeds", "at least 1 item"),
    Case("seeds-duplicate", sweep({"train.optimizer.lr": [1e-3]}, seeds=[3, 4, 3]), "sweep.seeds", "duplicate seeds [3]"),
    Case("seeds-negative", sweep({"train.optimizer.lr": [1e-3]}, seeds=[3, -4]), "sweep.seeds", "≥ 0"),
    Case("repeats-and-seeds", sweep({"train.optimizer.lr": [1e-3]}, repeats=2, seeds=[1, 2]), "sweep.seeds", "not both"),
    Case("repeats-and-swept-seed", sweep({"seed": [1, 2]}, repeats=3), "sweep.params.seed", "what repeats vary"),
    Case("swept-seed-with-flag", sweep({"seed": [1, 2]}), "sweep.params.seed", "what repeats vary", args=("--repeats", "2")),
    Case("repeats-with-median", sweep({"train.optimizer.lr": [1e-3]}, repeats=2, pruner="median"), "sweep.pruner.name", "use pruner: paired"),
    Case("paired-without-repeats", sweep({"train.optimizer.lr": [1e-3, 2e-3]}, pruner="paired"), "sweep.pruner.name", "set repeats"),
    Case("group-with-tpe", lambda d: d.update(sweep={"sampler": "tpe", "repeats": 2, "n_trials": 2}), "sweep.sampler", "nothing to pick"),
    # --- bad --set
    Case("set-without-equals", at("seed", 1), "train.optimizer.lr", "expected key=value", args=("--set", "train.optimizer.lr"), set_error=True),
    Case("set-unknown-path", at("seed", 1), "model.dmodel", "did you mean model.d_model", args=("--set", "model.dmodel=8"), set_error=True),
    Case("set-bad-yaml", at("seed", 1), "model.d_model", "invalid YAML", args=("--set", "model.d_model=[16,"), set_error=True),
    Case("set-wrong-type", at("seed", 1), "model.d_model", "valid integer", args=("--set", "model.d_model=abc")),
    Case("set-nan", at("seed", 1), "train.optimizer.lr", "finite", args=("--set", "train.optimizer.lr=.nan")),
    Case("set-python-tag", at("seed", 1), "seed", "could not determine a constructor", args=("--set", "seed=!!python/object/apply:os.system ['touch PWNED']"), set_error=True),
]


def _write_case(folder: Path, case: Case, corpus: str) -> Path:
    folder.mkdir()
    (folder / "tiny.txt").write_text(corpus, encoding="utf-8")
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    spec = folder / f"{case.name}.yaml"
    if case.spec is None:
        return spec  # the file does not exist
    if callable(case.spec):
        d = base()
        case.spec(d)
        write_spec(folder, d, name=spec.name)
    elif isinstance(case.spec, bytes):
        spec.write_bytes(case.spec)
    else:
        spec.write_text(case.spec, encoding="utf-8")
    return spec


@pytest.fixture
def no_model(monkeypatch):
    """Any construction of the GPT fails the test: a refused spec is refused by arithmetic, before any allocation."""
    import harness.model

    def boom(*a, **k):  # pragma: no cover - reached only if a spec were accepted
        raise AssertionError("the model was built")

    monkeypatch.setattr(harness.model.GPT, "__init__", boom)


def _problems(case: Case, spec: Path, code: int, out: str, err: str) -> list[str]:
    text = out + err
    bad = []
    if code != 2:
        bad.append(f"exit {code}, expected 2")
    if "Traceback" in text or "internal error" in text:
        bad.append("a traceback or internal error")
    if case.set_error:  # a malformed --set is blamed on --set, not on the file it was applied to
        if "problem in --set:" not in err or str(spec) in err:
            bad.append("the message does not blame --set (alone)")
    elif str(spec) not in err:
        bad.append("the message does not name the file")
    if case.path is not None and case.path not in err:
        bad.append(f"the message does not name {case.path}")
    if case.says and case.says not in err:
        bad.append(f"the message does not say {case.says!r}")
    return bad


def test_hostile_specs_all_exit_2_clearly_and_create_nothing(tmp_path, tiny_text, monkeypatch, capsys, no_model):
    me = psutil.Process()
    rss_before = me.memory_info().rss
    failures: dict[str, list[str]] = {}
    for case in CASES:
        folder = tmp_path / case.name
        spec = _write_case(folder, case, tiny_text)
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
        monkeypatch.setenv("HARNESS_STAGING", str(folder / "staging"))
        before = tree(folder)
        capsys.readouterr()
        code = main(["run", str(spec), *case.args])
        out, err = capsys.readouterr()
        bad = _problems(case, spec, code, out, err)
        created = tree(folder) - before
        if created:
            bad.append(f"created {sorted(created)}")
        if bad:
            failures[case.name] = bad + [f"stderr: {err.strip()[:600]}"]
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))
    assert me.memory_info().rss - rss_before < 200 * 2**20, "refusing a huge model must not allocate it"
    assert not failures, "\n".join(f"{name}: " + "; ".join(msgs) for name, msgs in failures.items())


def test_huge_model_refused_before_allocation_even_when_each_field_is_in_range(tmp_path, tiny_text, capsys, no_model):
    """Validation is pure arithmetic: the model class is never instantiated and nothing big is allocated."""
    (tmp_path / "tiny.txt").write_text(tiny_text)
    for model, says in (({"d_model": 10**9, "n_heads": 1, "n_layers": 1, "d_ff": 4}, "model.d_model"),
                        ({"d_model": 65536, "n_heads": 64, "n_layers": 1024, "d_ff": 1048576}, "parameters")):
        spec = write_spec(tmp_path, {**base(), "model": model}, name="huge.yaml")
        assert main(["run", str(spec)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


# Real processes: the exit code the shell sees, stderr without a traceback, and nothing created.
SUBPROCESS_CASES = ["tabs", "alias-bomb", "unknown-model", "d_model-1e9", "corpus-not-utf8", "swept-path-missing", "set-unknown-path"]


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a 1e9-wide model would need far more


def test_hostile_specs_as_real_processes(tmp_path, tiny_text):
    procs = []
    failures = {}
    try:
        for name in SUBPROCESS_CASES:
            case = next(c for c in CASES if c.name == name)
            folder = tmp_path / name
            spec = _write_case(folder, case, tiny_text)
            env = H.child_env(MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlruns/mlflow.db", HARNESS_STAGING=str(folder / "staging"))
            before = tree(folder)
            p = subprocess.Popen([sys.executable, "-m", "harness", "run", str(spec), *case.args], cwd=folder, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_cap_memory)
            procs.append((case, spec, folder, before, p))
        for case, spec, folder, before, p in procs:
            out, err = p.communicate(timeout=120)
            bad = _problems(case, spec, p.returncode, out, err)
            created = tree(folder) - before
            if created:
                bad.append(f"created {sorted(created)}")
            if bad:
                failures[case.name] = bad + [f"stderr: {err.strip()[:600]}"]
    finally:
        for *_, p in procs:  # a child that hung (communicate timed out) or was never waited for: end it
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert not failures, "\n".join(f"{name}: " + "; ".join(msgs) for name, msgs in failures.items())


def test_alias_bomb_is_refused_before_expansion(tmp_path, monkeypatch):
    """73 aliases pass the alias count; the expanded size (9**9 values) is computed on the node graph, memoised, and the
    file refused before a single Python object of the document is built."""
    from harness.errors import SpecError
    from harness.spec import read_yaml

    def construct(*a, **k):  # pragma: no cover - reached only if the bomb were expanded into Python objects
        raise AssertionError("the YAML document was constructed")

    monkeypatch.setattr(_SafeLoader, "construct_document", construct)
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(SpecError) as exc_info:
        read_yaml(path)
    (issue,) = exc_info.value.issues
    assert issue.message == (f"invalid YAML: the aliases in this YAML expand to more than {MAX_YAML_NODES} values; "
                             "refusing a possible alias bomb")
