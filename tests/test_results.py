"""harness.results on a real tiny sweep (real MLflow SQLite store, real Optuna study): selectors, dtypes, long-form
histories, the study join, compare/plot, exports, and the CLI's clear errors.

The sweep is conftest's session fixture ``tiny_sweep`` (trained once per session, shared with test_generate.py and
test_ui_server.py); ``in_sweep`` works inside its folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from conftest import tree
from mlflow import MlflowClient
from servers import free_port

from harness import results, serve
from harness.cli import main
from harness.errors import UsageError

# ----------------------------------------------------------------------------------------------------------- runs


def test_parse_value_undoes_mlflow_strings() -> None:
    p = results.parse_value
    assert p("1e-06") == 1e-06 and isinstance(p("1e-06"), float)
    assert p("0.001") == 0.001 and p("3") == 3 and isinstance(p("3"), int) and p("-2") == -2
    assert p("True") is True and p("False") is False and p("None") is None
    assert p("[0.9, 0.999]") == [0.9, 0.999] and p("('a', 1)") == ["a", 1] and p("{}") == {}
    assert math.isnan(p("nan")) and p("inf") == math.inf
    assert p("shakespeare/sonnets") == "shakespeare/sonnets" and p("[unclosed") == "[unclosed" and p("1e") == "1e"


def test_runs_one_row_per_trial_with_typed_params(in_sweep: SimpleNamespace) -> None:
    df = results.runs(in_sweep.study)
    assert len(df) == 3
    assert list(df["trial"]) == [0, 1, 2] and str(df["trial"].dtype) == "Int64"
    assert list(df["run_id"]) == [in_sweep.trials[i] for i in range(3)]
    assert set(df["parent_run_id"]) == {in_sweep.parent}
    assert set(df["status"]) == {"FINISHED"} and set(df["stop_reason"]) == {"completed"}
    # params come back with their real dtypes
    assert str(df["train.optimizer.lr"].dtype) == "float64" and list(df["train.optimizer.lr"]) == in_sweep.lrs
    assert str(df["model.d_model"].dtype) == "Int64" and set(df["model.d_model"]) == {16}
    assert str(df["model.bias"].dtype) == "boolean" and df["model.bias"].all()
    assert str(df["train.clip_grad_norm"].dtype) == "float64"
    assert str(df["train.epochs"].dtype) == "Int64" and df["train.epochs"].isna().all()  # None everywhere, typed by the schema
    assert df["train.optimizer.betas"].iloc[0] == [0.9, 0.999]
    assert str(df["derived.vocab_size"].dtype) == "Int64" and str(df["derived.ln_vocab"].dtype) == "float64"
    assert df["data.tokenizer.kind"].iloc[0] == "char"
    # metrics: final and best, steps and wall time
    assert str(df["steps"].dtype) == "Int64" and set(df["steps"]) == {in_sweep.steps}
    assert (df["wall_time_s"] > 0).all()
    assert str(df["start_time"].dtype).startswith("datetime64") and df["start_time"].dt.tz is not None
    assert (df["best/val/loss"] <= df["val/loss"] + 1e-12).all()
    assert df["best/val/loss"].tolist() == pytest.approx(df["summary/best_val_loss"].tolist())
    assert set(df["best_step/val/loss"]) <= set(range(0, in_sweep.steps + 1, in_sweep.every))
    assert df["val/loss"].iloc[0] < df["val/loss"].iloc[2]  # lr 1e-2 learns, 1e-6 barely moves
    assert results.params_of(df)[0] == "data.corpus" and "val/loss" not in results.params_of(df)


def test_selectors(in_sweep: SimpleNamespace) -> None:
    by_study = results.runs(in_sweep.study)
    by_exp = results.runs(in_sweep.experiment)
    by_parent = results.runs(in_sweep.parent)
    assert list(by_exp["run_id"]) == list(by_study["run_id"]) == list(by_parent["run_id"])
    with_parent = results.runs(in_sweep.experiment, include_parents=True)
    assert len(with_parent) == 4 and with_parent["role"].tolist().count("sweep") == 1
    one = results.runs(in_sweep.trials[1])
    assert len(one) == 1 and one["trial"].iloc[0] == 1
    two = results.runs([in_sweep.trials[2], in_sweep.trials[0], in_sweep.trials[2]])
    assert list(two["run_id"]) == [in_sweep.trials[2], in_sweep.trials[0]]
    assert len(results.runs(in_sweep.study, uri=in_sweep.uri)) == 3


# ----------------------------------------------------------------------------------------------------------- history


def test_history_long_form_matches_get_metric_history(in_sweep: SimpleNamespace) -> None:
    hist = results.history(in_sweep.study, metrics=["train/loss", "val/loss"])
    assert list(hist.columns[:6]) == ["run_id", "run_name", "metric", "step", "value", "timestamp"]
    assert "train.optimizer.lr" in hist.columns and str(hist["train.optimizer.lr"].dtype) == "float64"
    assert "tracking.run_name" not in hist.columns and not any(c.startswith("derived.") for c in hist.columns)
    assert set(hist["metric"]) == {"train/loss", "val/loss"}
    assert str(hist["step"].dtype) == "int64" and str(hist["value"].dtype) == "float64"
    counts = hist.groupby(["run_id", "metric"]).size()
    n_evals = len(range(0, in_sweep.steps + 1, in_sweep.every))
    for rid in in_sweep.trials.values():
        assert counts[(rid, "train/loss")] == in_sweep.steps
        assert counts[(rid, "val/loss")] == n_evals
    client = MlflowClient(tracking_uri=in_sweep.uri)
    rid = in_sweep.trials[0]
    ref = sorted((m.step, m.value) for m in client.get_metric_history(rid, "val/loss"))
    got = hist[(hist.run_id == rid) & (hist.metric == "val/loss")]
    assert list(zip(got["step"], got["value"])) == ref
    assert set(hist.loc[hist.run_id == rid, "train.optimizer.lr"]) == {in_sweep.lrs[0]}
    # the per-run fallback (for http stores) returns exactly the same frame
    slow = results.history(in_sweep.study, metrics=["train/loss", "val/loss"], bulk=False)
    pd.testing.assert_frame_equal(hist, slow, check_dtype=False)


def test_history_bulk_makes_no_per_run_requests(in_sweep: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("get_metric_history called: the bulk path should read the metrics table")

    monkeypatch.setattr(MlflowClient, "get_metric_history", refuse)
    hist = results.history(in_sweep.study)  # every per-step metric, no summary/*
    assert {"train/loss", "val/loss", "lr", "grad_norm"} <= set(hist["metric"])
    assert not any(m.startswith("summary/") for m in hist["metric"])
    assert len(results.history(in_sweep.study, metrics="lr", params=None).columns) == 6


def test_history_unknown_metric_is_a_usage_error(in_sweep: SimpleNamespace) -> None:
    with pytest.raises(UsageError, match="no selected run logged val/los.*metrics there: val/loss"):
        results.history(in_sweep.study, metrics=["val/los"])


# ----------------------------------------------------------------------------------------------------------- study


def test_study_joined_to_mlflow_runs(in_sweep: SimpleNamespace) -> None:
    st = results.study(in_sweep.study)
    assert len(st) == 3 and list(st["number"]) == [0, 1, 2]
    assert list(st["run_id"]) == [in_sweep.trials[i] for i in range(3)]
    assert set(st["stop_reason"]) == {"completed"} and set(st["mlflow_status"]) == {"FINISHED"}
    assert set(st["state"]) == {"COMPLETE"} and not st["superseded"].any()
    assert list(st["params_train.optimizer.lr"]) == in_sweep.lrs
    runs = results.runs(in_sweep.study)
    joined = runs.merge(st[["run_id", "value"]], on="run_id")
    assert joined["value"].tolist() == pytest.approx(joined["best/val/loss"].tolist())  # objective = best val/loss
    assert st.attrs["parent_run_id"] == in_sweep.parent
    # the same study by sweep spec path and by parent run id
    assert list(results.study(str(in_sweep.spec))["run_id"]) == list(st["run_id"])
    assert list(results.study(in_sweep.parent)["run_id"]) == list(st["run_id"])


def test_study_unknown(in_sweep: SimpleNamespace) -> None:
    with pytest.raises(UsageError, match="no Optuna study 'nope'"):
        results.study("nope")
    with pytest.raises(UsageError, match="no study named 'nope' in .*studies there: tsweep"):
        results.study("nope", storage=in_sweep.storage)


# ----------------------------------------------------------------------------------------------------------- compare, plots


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_compare_params_metrics_and_png(in_sweep: SimpleNamespace, tmp_path: Path) -> None:
    a, b = in_sweep.trials[0], in_sweep.trials[2]
    cmp = results.compare([a, b], out=tmp_path / "cmp.png")
    assert list(cmp.params.index) == ["train.optimizer.lr"]
    assert cmp.params.loc["train.optimizer.lr"].tolist() == [in_sweep.lrs[0], in_sweep.lrs[2]]
    assert cmp.labels == ["tsweep-t000", "tsweep-t002"]
    assert {"val/loss", "best/val/loss", "train/loss", "stop_reason", "steps"} <= set(cmp.metrics.index)
    assert "tracking.run_name" not in cmp.metrics.index
    assert cmp.metrics.loc["steps"].tolist() == [in_sweep.steps, in_sweep.steps]
    assert cmp.plot == tmp_path / "cmp.png" and _png(cmp.plot)
    with pytest.raises(UsageError, match="at least two runs"):
        results.compare([a])


def test_plot_kinds(in_sweep: SimpleNamespace, tmp_path: Path) -> None:
    rid = in_sweep.trials[0]
    for kind in ("loss", "grad_norm", "lr"):
        assert _png(results.plot(rid, kind, out=tmp_path / f"{kind}.png"))
    assert _png(results.plot(in_sweep.study, "overlay", out=tmp_path / "overlay.png"))
    assert _png(results.plot(in_sweep.parent, "objective", out=tmp_path / "objective.png"))
    with pytest.raises(UsageError, match="draws one run"):
        results.plot(in_sweep.study, "loss", out=tmp_path / "x.png")


# ----------------------------------------------------------------------------------------------------------- CLI


def test_cli_results_table_sort_top_and_exports(in_sweep: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv, pq = tmp_path / "runs.csv", tmp_path / "runs.parquet"
    rc = main(["results", in_sweep.study, "--sort", "val/loss", "--top", "2", "--csv", str(csv), "--parquet", str(pq)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train.optimizer.lr" in out and "best/val/loss" in out and in_sweep.trials[0][:8] in out
    assert in_sweep.trials[2] not in out  # lr 1e-6 has the worst val/loss: cut by --top 2
    assert "2 runs, sorted by val/loss" in out
    from_csv = pd.read_csv(csv)
    assert len(from_csv) == 2 and list(from_csv["train.optimizer.lr"]) == [in_sweep.lrs[0], in_sweep.lrs[1]]
    from_pq = pd.read_parquet(pq)
    assert len(from_pq) == 2 and str(from_pq["train.optimizer.lr"].dtype) == "float64" and str(from_pq["trial"].dtype) == "Int64"
    assert from_pq["val/loss"].is_monotonic_increasing


@pytest.mark.parametrize("argv, message", [
    (["results", "no_such_experiment"], "no experiment, run id or study 'no_such_experiment'"),
    (["results", "tsweep_ex"], "did you mean 'tsweep_exp'"),
    (["results", "0" * 32], f"no run with id '{'0' * 32}'"),
    (["compare", "0" * 32, "f" * 32], f"no run with id '{'0' * 32}'"),
    (["compare", "no_such_experiment", "tsweep"], "no experiment, run id or study 'no_such_experiment'"),
    (["results", "tsweep", "--sort", "val/los"], "cannot sort by 'val/los'"),
    (["plot", "0" * 32], "no run with id"),
    (["dashboard", "no_such_study"], "no Optuna study 'no_such_study'"),
])
def test_cli_unknown_ids_exit_2_without_traceback(in_sweep: SimpleNamespace, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                  message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_cli_compare_one_run_is_an_error(in_sweep: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", in_sweep.trials[0]]) == 2
    assert "compare needs at least two runs" in capsys.readouterr().err


def test_cli_compare(in_sweep: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_png = tmp_path / "c.png"
    assert main(["compare", in_sweep.trials[0], in_sweep.trials[1], "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "params that differ:" in out and "train.optimizer.lr" in out and "val/loss" in out and f"wrote {out_png}" in out
    assert _png(out_png)


def test_no_store_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mlruns").rmdir()  # conftest's store folder: without it, no folder from here up holds a project's store
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    before = tree(tmp_path)
    assert main(["results", "anything"]) == 2
    assert f"no MLflow store at {empty.resolve() / 'mlruns' / 'mlflow.db'}" in capsys.readouterr().err
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------- ui / dashboard plans


def test_ui_plan_is_lean_and_loopback(in_sweep: SimpleNamespace) -> None:
    plan = serve.ui_plan(port=free_port())
    argv = plan.argv
    assert argv is not None and argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--workers") + 1] == "1" and argv[argv.index("--host") + 1] == "127.0.0.1"
    # the store reaches the server through its environment, never its command line (issue 27)
    assert "--backend-store-uri" not in argv
    assert plan.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{(in_sweep.dir / 'mlruns' / 'mlflow.db').resolve()}"
    assert "--serve-artifacts" in argv and plan.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert plan.warnings == [] and plan.url.startswith("http://127.0.0.1:")
    exposed = serve.ui_plan(host="0.0.0.0", port=free_port())
    assert exposed.warnings and "WARNING" in exposed.warnings[0] and "0.0.0.0" in exposed.warnings[0]


def test_ui_busy_port_and_dry_run(in_sweep: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
        assert "already in use" in capsys.readouterr().err
    assert main(["ui", "--port", str(free_port()), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MLFLOW_BACKEND_STORE_URI=sqlite:///" in out and "-m mlflow server --default-artifact-root" in out


def test_dashboard_plan_and_missing_package(in_sweep: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    db = (in_sweep.dir / "studies" / f"{in_sweep.study}.db").resolve()
    for target in (in_sweep.study, str(in_sweep.spec), in_sweep.parent):
        plan = serve.dashboard_plan(target, port=free_port())
        assert plan.study == in_sweep.study and plan.storage == f"sqlite:///{db}"
        assert plan.command.startswith(f"optuna-dashboard sqlite:///{db} --host 127.0.0.1 --port ")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a))
    assert main(["dashboard", in_sweep.study, "--port", "8099"]) == 2
    out = capsys.readouterr().out
    assert 'pip install "optuna-dashboard>=0.20"' in out and f"optuna-dashboard sqlite:///{db} --host 127.0.0.1 --port 8099" in out

