"""Repeated seeds: what the paired rule saves on the way to a verdict, and what the repeats machinery costs.

    python bench/bench_repeats.py                 # both figures, 2 alternated rounds each (~35 minutes on 2 cores)
    python bench/bench_repeats.py verdict         # or: overhead
    python bench/bench_repeats.py --rounds 1 --quick   # 60-step runs: checks the script, not the figures
    python bench/bench_repeats.py verdict --rounds 1 --busy   # no waiting for a quiet machine: the compute and the
                                                              # verdicts hold (sweeps pin their threads), the wall times do not

* **verdict**: `harness run experiments/lr_sweep.yaml --repeats 5` (the textbook's learning-rate exercise, every
  configuration under the same 5 seeds: 15 full runs) against the same command with the paired rule
  (`--set sweep.pruner.name=paired`), in alternated rounds. Per variant: wall time, the training steps run (the
  compute: a stopped seed run counts the steps it made), seed runs started and finished, the winner (the best
  configuration by mean best val loss) and every configuration's verdict.
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

from bench_perf import ROOT, Measured, _adopt_orphans, quietly

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
    facts: dict[str, Any] = {"started": len(runs), "finished": int((runs["status"] == "FINISHED").sum()),
                             "steps": int(runs["steps"].fillna(0).sum())}
    if runs["config_id"].notna().any():
        cfg = results.configs("lr_sweep", uri=uri)
        best = cfg.attrs["best"]
        row = cfg[cfg["config_id"] == best].iloc[0]
        facts.update(winner=row["config"], winner_mean=float(row["objective_mean"]),
                     verdicts={r["config"]: (r["verdict"], int(r["n"]), r["objective_mean"], r["vs_best"], r["vs_best_low"],
                                             r["vs_best_high"], r["p_adjusted"]) for _, r in cfg.iterrows()})
        # the textbook's own measure, the final training loss (the last epoch's mean), judged by the same procedure
        from harness.stats import summarize_groups

        seeds = runs[runs["config_id"].notna() & (runs["status"] == "FINISHED")]
        train = summarize_groups(seeds, group="config", pair="seed", columns={"train/loss_epoch": True}, objective="train/loss_epoch")
        facts["train_verdicts"] = {r["config"]: (r["verdict"], int(r["n"]), r["train/loss_epoch_mean"], r["vs_best"], r["vs_best_low"],
                                                 r["vs_best_high"], r["p_adjusted"]) for _, r in train.iterrows()}
    else:
        best = runs.sort_values("best/val/loss").iloc[0]
        facts.update(winner=f"lr={best['train.optimizer.lr']:.3g}", winner_mean=float(best["best/val/loss"]))
    return facts


BUSY = False  # --busy: measure without waiting for a quiet machine


def _pairs(tmp: Path, rounds: int, a: tuple[str, list[str]], b: tuple[str, list[str]], quick: bool) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` alternated rounds of two variants (a then b, then b then a, ...), each measured quietly."""
    got: dict[str, list[dict[str, Any]]] = {a[0]: [], b[0]: []}
    for i in range(rounds):
        for name, args in ((a, b) if i % 2 == 0 else (b, a)):
            if BUSY:
                m = Measured(_run(tmp, name, *args, quick=quick), float("nan"), 1)
            else:
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
             "| round | naive wall (s) | naive steps | paired wall (s) | paired steps | runs started / finished | compute ratio | "
             "wall ratio | winner (naive / paired) | others' CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for i, (n, p) in enumerate(zip(got["naive"], got["paired"])):
        lines.append(f"| {i + 1} | {n['wall']:.1f} | {n['steps']} | {p['wall']:.1f} | {p['steps']} | {p['started']} / {p['finished']} | "
                     f"{p['steps'] / n['steps']:.2f}x | {p['wall'] / n['wall']:.2f}x | {n['winner']} / {p['winner']} | "
                     f"{max(n['others_cpu'], p['others_cpu']):.2f} |")
    med = statistics.median(ratios)
    compute = statistics.median(p["steps"] / n["steps"] for n, p in zip(got["naive"], got["paired"]))
    lines += ["", f"Median **{compute:.2f}x** the training steps of all 15 seed runs, **{med:.2f}x** the wall time"
              + (" (--busy: the machine was not kept quiet, so the wall times are not figures)" if BUSY else "")
              + f"; same winner in every round: {'yes' if same else 'NO'}.", ""]
    for name, key, what in (("naive", "verdicts", "best val loss"), ("naive", "train_verdicts", "final train loss"),
                            ("paired", "verdicts", "best val loss")):
        lines += [f"Verdicts, {name} (last round), on the {what}: configuration, verdict, seeds, mean, vs best [95 % CI], "
                  "Holm-adjusted p:", ""]
        for k, v in got[name][-1].get(key, {}).items():
            verdict_, n_, mean, d, lo, hi, pa = v
            lines.append(f"- {k}: {verdict_}, n={n_}, {mean:.4f}" + (f", {d:+.4f} [{lo:+.4f}, {hi:+.4f}], p_adj {pa:.2g}"
                                                                     if d == d else ""))
        lines.append("")
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
    ap.add_argument("--busy", action="store_true", help="do not wait for a quiet machine (compute and verdicts only)")
    args = ap.parse_args()
    global BUSY
    BUSY = args.busy
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
