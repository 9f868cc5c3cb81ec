"""`harness generate`: text from a run's checkpoint with the tokenizer saved with the run.

Uses conftest's tiny sweep (``tiny_sweep``, trained once per session; ``in_sweep`` works inside its folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.generate import generate


def _artifacts(sweep: SimpleNamespace, trial: int) -> Path:
    hits = list((sweep.dir / "mlruns").glob(f"*/{sweep.trials[trial]}/artifacts"))
    assert len(hits) == 1
    return hits[0]


def _vocab(sweep: SimpleNamespace, trial: int) -> set[str]:
    tok = json.loads((_artifacts(sweep, trial) / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["kind"] == "char"
    return set(tok["chars"])


def test_deterministic_for_a_seed_and_only_vocabulary_characters(in_sweep: SimpleNamespace) -> None:
    rid = in_sweep.trials[0]
    a = generate(rid, "Shall I", max_tokens=60, temperature=0.8, top_k=40, seed=0)
    b = generate(rid, "Shall I", max_tokens=60, temperature=0.8, top_k=40, seed=0)
    c = generate(rid, "Shall I", max_tokens=60, temperature=0.8, top_k=40, seed=1)
    assert a.text == b.text and a.tokens == b.tokens
    assert c.text != a.text
    assert a.text.startswith("Shall I") and a.text == a.prompt + a.completion
    assert len(a.tokens) == 60 and len(a.completion) == 60  # char tokenizer: one character per token
    assert set(a.completion) <= _vocab(in_sweep, 0) and set(c.completion) <= _vocab(in_sweep, 0)
    assert a.checkpoint.name == "best.pt" and a.run_id == rid and a.step is not None and 0 < a.step <= in_sweep.steps


def test_checkpoint_path_and_artifact_folder_match_the_run_id(in_sweep: SimpleNamespace) -> None:
    rid = in_sweep.trials[1]
    art = _artifacts(in_sweep, 1)
    by_id = generate(rid, "The ", max_tokens=30, seed=5)
    by_file = generate(art / "checkpoints" / "best.pt", "The ", max_tokens=30, seed=5)
    by_dir = generate(str(art), "The ", max_tokens=30, seed=5)
    assert by_id.text == by_file.text == by_dir.text
    last = generate(rid, "The ", max_tokens=30, seed=5, last=True)
    assert last.checkpoint.name == "last.pt"


def test_greedy_ignores_the_seed_and_sweep_parent_uses_best_trial(in_sweep: SimpleNamespace) -> None:
    rid = in_sweep.trials[0]  # lr 1e-2: the best val/loss of the three
    g1 = generate(rid, "the", max_tokens=25, temperature=0, seed=1)
    g2 = generate(rid, "the", max_tokens=25, temperature=0, seed=2)
    assert g1.text == g2.text
    via_parent = generate(in_sweep.parent, "the", max_tokens=25, temperature=0)
    assert via_parent.run_id == rid and via_parent.text == g1.text
    assert any("best trial 0" in n for n in via_parent.notes)


def test_empty_prompt_starts_from_a_newline(in_sweep: SimpleNamespace) -> None:
    out = generate(in_sweep.trials[0], "", max_tokens=10, seed=0)
    assert out.prompt == "" and len(out.completion) == 10
    assert out.text == out.completion  # the newline it starts from is context, not part of the text
    assert out.notes == ["no prompt given; starting from '\\n'"]


def test_cli_generate_prints_the_text(in_sweep: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    rid = in_sweep.trials[0]
    args = ["generate", rid, "--prompt", "Shall I", "--max-tokens", "40", "--temperature", "0.8", "--top-k", "40", "--seed", "0"]
    assert main(args) == 0
    cap = capsys.readouterr()
    expected = generate(rid, "Shall I", max_tokens=40, temperature=0.8, top_k=40, seed=0).text
    assert cap.out == expected + "\n"
    assert "best.pt (step" in cap.err


@pytest.mark.parametrize("argv, message", [
    (["generate", "0" * 32], f"no run with id '{'0' * 32}'"),
    (["generate", "not-a-run"], "'not-a-run' is neither a checkpoint file, nor a run id, nor an experiment in sqlite:///"),
    (["generate", "TRIAL0", "--prompt", "\u20ac\u20ac"], "the prompt encodes to no tokens this run's tokenizer knows"),
    (["generate", "TRIAL0", "--temperature", "-1"], "--temperature must be 0"),
])
def test_cli_generate_errors_exit_2(in_sweep: SimpleNamespace, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    argv = [in_sweep.trials[0] if a == "TRIAL0" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_characters_the_model_never_saw_are_left_out_with_a_note(in_sweep: SimpleNamespace) -> None:
    out = generate(in_sweep.trials[0], "the \u20ac", max_tokens=3, temperature=0)
    assert out.prompt == "the \u20ac" and "left out 1 character of the prompt that the model never saw" in out.notes
    assert out.completion == generate(in_sweep.trials[0], "the ", max_tokens=3, temperature=0).completion


def test_checkpoint_without_its_spec_is_a_clear_error(in_sweep: SimpleNamespace, tmp_path: Path) -> None:
    import shutil

    lone = tmp_path / "lone.pt"
    shutil.copy(_artifacts(in_sweep, 0) / "checkpoints" / "best.pt", lone)
    with pytest.raises(UsageError, match="no spec.yaml and tokenizer.json next to it"):
        generate(lone, "the")
