"""Bulk metric-history loading vs one get_metric_history call per run per metric.

Builds a sweep-shaped MLflow store (one parent run, N child runs tagged like harness trials, S steps of two metrics
each, written directly with MlflowClient.log_batch: no training), then times

* bulk:  ``harness.results.history(parent_run_id, metrics=[...])``: selection, one SELECT per 500 runs, typed
  DataFrame with the swept param as a column;
* naive: ``MlflowClient.get_metric_history(run_id, key)`` for every run and key (N x 2 queries), into a DataFrame;
* ``history(..., bulk=False)``: the fallback path harness uses for non-SQL stores, for reference.

and checks that all three return the same points.

    python bench/bench_history.py                  # 50 runs x 2,000 steps x 2 metrics, SQLite in a temp folder
    python bench/bench_history.py --runs 10 --steps 500 --repeat 5 --keep /tmp/bench-store
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

METRICS = ("train/loss", "val/loss")


def build_store(folder: Path, n_runs: int, n_steps: int) -> tuple[str, str]:
    """Create the store; returns (tracking uri, parent run id)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    (folder / "mlruns").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench_sweep", artifact_location=str(folder / "mlruns" / "bench"))
    parent = client.create_run(exp, run_name="bench_sweep-sweep", tags={"harness.role": "sweep", "harness.study": "bench_sweep"})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("sweep.params.train.optimizer.lr", "[grid]")])
    rng = random.Random(0)
    t0 = int(time.time() * 1000)
    for i in range(n_runs):
        lr = 10 ** rng.uniform(-5, -2)
        run = client.create_run(exp, run_name=f"bench_sweep-t{i:03d}", tags={
            "mlflow.parentRunId": pid, "harness.role": "trial", "harness.trial": str(i), "harness.study": "bench_sweep"})
        rid = run.info.run_id
        client.log_batch(rid, params=[Param("train.optimizer.lr", repr(lr)), Param("model.d_model", "64"), Param("seed", "1")])
        points = []
        for step in range(n_steps):
            loss = 4.0 * (0.999 ** step) + 0.05 * rng.random()
            points.append(Metric("train/loss", loss, t0 + step, step))
            points.append(Metric("val/loss", loss + 0.1, t0 + step, step))
        for j in range(0, len(points), 1000):
            client.log_batch(rid, metrics=points[j : j + 1000])
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(pid, "FINISHED")
    return uri, pid


def naive(uri: str, parent_id: str):  # type: ignore[no-untyped-def]
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    kids = client.search_runs([client.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=1000)
    rows = []
    for run in kids:
        for key in METRICS:
            for m in client.get_metric_history(run.info.run_id, key):
                rows.append((run.info.run_id, key, m.step, m.value))
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])


def timed(fn, repeat: int):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def canon(df):  # type: ignore[no-untyped-def]
    return df[["run_id", "metric", "step", "value"]].sort_values(["run_id", "metric", "step"]).reset_index(drop=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of each method (median reported)")
    ap.add_argument("--keep", type=Path, help="build the store in this folder and keep it; a later run with the same --keep "
                    "and shape reuses it (default: a temp folder, deleted)")
    args = ap.parse_args()

    from harness import results
    from harness.tracking.store import quiet_mlflow as _quiet_mlflow

    _quiet_mlflow()
    tmp = None
    folder = args.keep
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-history-")
        folder = Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    marker = folder / "bench_store.json"
    n_points = args.runs * args.steps * len(METRICS)
    if marker.is_file() and json.loads(marker.read_text())["shape"] == [args.runs, args.steps]:
        uri, pid = (json.loads(marker.read_text())[k] for k in ("uri", "parent"))
        print(f"store: reusing {uri} ({args.runs} runs x {args.steps} steps x {len(METRICS)} metrics = {n_points:,} points)")
    else:
        if (folder / "mlruns").exists():
            raise SystemExit(f"{folder} holds another mlruns store; pass an empty folder to --keep")
        t = time.perf_counter()
        uri, pid = build_store(folder, args.runs, args.steps)
        build_s = time.perf_counter() - t
        marker.write_text(json.dumps({"shape": [args.runs, args.steps], "uri": uri, "parent": pid}))
        print(f"store: {args.runs} runs x {args.steps} steps x {len(METRICS)} metrics = {n_points:,} points "
              f"(written with log_batch in {build_s:.1f} s) at {uri}")

    results.history(pid, metrics=list(METRICS), uri=uri)  # warm up: imports, engine, first connection
    naive(uri, pid)
    bulk_df, bulk_t = timed(lambda: results.history(pid, metrics=list(METRICS), uri=uri), args.repeat)
    naive_df, naive_t = timed(lambda: naive(uri, pid), args.repeat)
    fb_df, fb_t = timed(lambda: results.history(pid, metrics=list(METRICS), uri=uri, bulk=False), args.repeat)

    assert len(bulk_df) == n_points, (len(bulk_df), n_points)
    from pandas.testing import assert_frame_equal

    assert_frame_equal(canon(bulk_df), canon(naive_df), check_dtype=False)  # the same points, whatever the string dtype
    assert_frame_equal(canon(bulk_df), canon(fb_df), check_dtype=False)
    assert "train.optimizer.lr" in bulk_df.columns and str(bulk_df["train.optimizer.lr"].dtype) == "float64"

    b, n, f = statistics.median(bulk_t), statistics.median(naive_t), statistics.median(fb_t)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"mlflow {__import__('mlflow').__version__}, pandas {__import__('pandas').__version__}")
    print(f"{'method':58s} {'median s':>9s} {'points/s':>12s}  runs (s)")
    for name, med, ts in (
        ("bulk: results.history() (1 SELECT per 500 runs)", b, bulk_t),
        (f"naive: get_metric_history per run per metric ({args.runs * len(METRICS)} calls)", n, naive_t),
        ("fallback: results.history(bulk=False)", f, fb_t),
    ):
        print(f"{name:58s} {med:9.3f} {n_points / med:12,.0f}  {', '.join(f'{x:.3f}' for x in ts)}")
    print(f"speed-up bulk vs naive: {n / b:.1f}x")
    if tmp is not None:
        os.chdir("/")
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
