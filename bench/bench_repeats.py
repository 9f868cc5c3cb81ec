"""Repeated seeds: what the paired rule saves on the way to a verdict, and what the repeats machinery costs.

    python bench/bench_repeats.py                 # both figures, 2 alternated rounds each (~35 minutes on 2 cores)
    python bench/bench_repeats.py verdict         # or: overhead
    python bench/bench_repeats.py --rounds 1 --quick   # 60-step runs: checks the script, not the figures

* **verdict**: `harness run experiments/lr_sweep.yaml --repeats 5` (the textbook's learning-rate exercise, every
  configuration under the same 5 seeds: 15 full runs) against the same command with the paired rule
  (`--set sweep.pruner.name=paired`), in alternated rounds. Per variant: wall time, seed runs started and finished,
  and the winner (the best configuration by mean best val loss). The target is <= 0.6x the naive wall time with the
  same winner.
* **overhead**: `experiments/lr_sweep.yaml` as a plain sweep (3 trials) against the same grid as a repeated sweep of
  one seed (`sweep.seeds: [1337]`): the same three runs, once through the repeats machinery (a second study, the
  configurations' settling, tags, the parent's aggregates and configs.csv). Both choose their workers the same way.

Each command runs as a child process in a fresh project folder (its own mlruns/ and studies/), on a quiet machine
(bench_perf's rules: it waits until no other pytest/harness process runs, and measures again when others used more
than 0.15 CPU meanwhile). Writes bench/RESULTS-repeats.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_perf import ROOT, _adopt_orphans, quietly

SPEC = ROOT / "experiments" / "lr_sweep.yaml"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "MLFLOW_TRACKING_URI", "OMP_", "MKL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _run(tmp: Path, name: str, *args: str, quick: bool) -> dict[str, Any]:
    """``harness run`` in a fresh project folder; its wall time and what landed in its store."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    (folder / "mlruns").mkdir()
    extra = ["--set", "train.epochs=2"] if quick else []
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "harness", "run", str(SPEC), "-q", *args, *extra], cwd=folder, env=_env(),
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return {"wall": wall, "folder": folder, **_store(folder)}


def _store(folder: Path) -> dict[str, Any]:
    from harness import results

    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    runs = results.runs("lr_sweep", uri=uri)
    facts: dict[str, Any] = {"started": len(runs), "finished": int((runs["status"] == "FINISHED").sum())}
    if runs["config_id"].notna().any():
        cfg = results.configs("lr_sweep", uri=uri)
        best = cfg.attrs["best"]
        row = cfg[(cfg["study"].fillna("") + "/" + cfg["config_id"]) == best].iloc[0]
        facts.update(winner=row["config"], winner_mean=float(row["objective_mean"]),
                     verdicts={r["config"]: (r["verdict"], int(r["n"])) for _, r in cfg.iterrows()})
    else:
        best = runs.sort_values("best/val/loss").iloc[0]
        facts.update(winner=f"lr={best['train.optimizer.lr']:.3g}", winner_mean=float(best["best/val/loss"]))
    return facts


def _pairs(tmp: Path, rounds: int, a: tuple[str, list[str]], b: tuple[str, list[str]], quick: bool) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` alternated rounds of two variants (a then b, then b then a, ...), each measured quietly."""
    got: dict[str, list[dict[str, Any]]] = {a[0]: [], b[0]: []}
    for i in range(rounds):
        for name, args in ((a, b) if i % 2 == 0 else (b, a)):
            m = quietly(lambda: _run(tmp, name, *args, quick=quick), _log, f"round {i + 1} {name}")
            m.value["others_cpu"] = m.foreign_cpu
            got[name].append(m.value)
            _log(f"  {name}: {m.value['wall']:.1f} s, {m.value['finished']}/{m.value['started']} runs finished, winner {m.value['winner']}")
            shutil.rmtree(m.value.pop("folder"), ignore_errors=True)
    return got


def verdict(tmp: Path, rounds: int, quick: bool) -> list[str]:
    got = _pairs(tmp, rounds, ("naive", ["--repeats", "5"]), ("paired", ["--repeats", "5", "--set", "sweep.pruner.name=paired"]), quick)
    ratios = [p["wall"] / n["wall"] for n, p in zip(got["naive"], got["paired"])]
    same = all(p["winner"] == n["winner"] for n, p in zip(got["naive"], got["paired"]))
    lines = ["## Compute to a verdict: the 5-seed learning-rate exercise", "",
             "| round | naive wall (s) | runs finished | paired wall (s) | runs started / finished | ratio | winner (naive / paired) | others' CPU |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for i, (n, p) in enumerate(zip(got["naive"], got["paired"])):
        lines.append(f"| {i + 1} | {n['wall']:.1f} | {n['finished']} | {p['wall']:.1f} | {p['started']} / {p['finished']} | "
                     f"{p['wall'] / n['wall']:.2f}x | {n['winner']} / {p['winner']} | {max(n['others_cpu'], p['others_cpu']):.2f} |")
    med = statistics.median(ratios)
    lines += ["", f"Median ratio **{med:.2f}x** the naive wall time (target <= 0.6x): "
              f"{'met' if med <= 0.6 else 'not met'}; same winner in every round: {'yes' if same else 'NO'}.", ""]
    last = got["paired"][-1]
    lines.append("What the paired rule decided (last round; configuration: verdict, seeds run): "
                 + "; ".join(f"{k}: {v[0]}, n={v[1]}" for k, v in last.get("verdicts", {}).items()))
    return lines


def overhead(tmp: Path, rounds: int, quick: bool) -> list[str]:
    got = _pairs(tmp, rounds, ("plain", []), ("one-seed repeat", ["--set", "sweep.seeds=[1337]"]), quick)
    ratios = [r["wall"] / p["wall"] for p, r in zip(got["plain"], got["one-seed repeat"])]
    lines = ["## Per-run overhead of the repeats machinery", "",
             "| round | plain sweep (s) | one-seed repeated sweep (s) | ratio | others' CPU |", "|---|---:|---:|---:|---:|"]
    for i, (p, r) in enumerate(zip(got["plain"], got["one-seed repeat"])):
        lines.append(f"| {i + 1} | {p['wall']:.1f} | {r['wall']:.1f} | {r['wall'] / p['wall']:.3f}x | {max(p['others_cpu'], r['others_cpu']):.2f} |")
    lines += ["", f"Median ratio {statistics.median(ratios):.3f}x for the same three runs "
              f"({(statistics.median([r['wall'] for r in got['one-seed repeat']]) - statistics.median([p['wall'] for p in got['plain']])) / 3:+.2f} s per run).", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figures", nargs="*", help="verdict and/or overhead (default: both)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2-epoch runs: checks the script, not the figures")
    args = ap.parse_args()
    figures = args.figures or ["verdict", "overhead"]
    unknown = set(figures) - {"verdict", "overhead"}
    if unknown:
        ap.error(f"unknown figure(s) {sorted(unknown)}: choose verdict and/or overhead")
    _adopt_orphans()
    lines = [f"# Repeated seeds: measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"`python bench/bench_repeats.py {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPUs"
             + (" (--quick: not the figures)" if args.quick else ""), ""]
    with tempfile.TemporaryDirectory(prefix="bench-repeats-") as tmp:
        for f in figures:
            lines += {"verdict": verdict, "overhead": overhead}[f](Path(tmp), args.rounds, args.quick)
            text = "\n".join(lines) + "\n"
            if not args.quick:  # after each figure: a later one that fails does not lose the earlier one
                (ROOT / "bench" / "RESULTS-repeats.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
