"""The README's sweep verdicts, re-measured with the procedure harness uses (Holm over all pairs, family-wise 5 %):
batch_size_sweep and finetune_lr_sweep (after names_pretrain), 5 seeds each, on the headline columns.

    mkdir /tmp/rv && cd /tmp/rv && python <repo>/bench/readme_verdicts.py <repo> batch finetune   # ~25 min on 2 cores

Run it from an empty project folder (it makes its own mlruns/ and studies/). The exercise-1 verdicts come from
bench_repeats.py (its naive variant). Sweeps pin their workers' threads, so the digits repeat on one machine however
busy it is. Results: RESULTS-readme-verdicts.md."""
import subprocess, sys, json
from harness import results
from harness.stats import summarize_groups

def run(*args):
    print("$ harness", *args, flush=True)
    subprocess.run([sys.executable, "-m", "harness", *args], check=True)

def table(sel, cols):
    runs = results.runs(sel)
    seeds = runs[runs["config_id"].notna() & (runs["status"] == "FINISHED")]
    for col, lower in cols:
        t = summarize_groups(seeds, group="config", pair="seed", columns={col: lower}, objective=col)
        print(f"\n== {sel}: {col} ({t.attrs['procedure']})")
        print(t[["config", "n", f"{col}_mean", f"{col}_ci_low", f"{col}_ci_high", "vs_best", "vs_best_low", "vs_best_high", "p", "p_adjusted", "verdict"]].to_string(index=False))

R = sys.argv[1]
which = sys.argv[2:]
if "batch" in which:
    run("run", f"{R}/experiments/batch_size_sweep.yaml", "--repeats", "5", "-q")
    table("batch_size_sweep", [("best/val/loss", True), ("train/loss_epoch", True)])
if "finetune" in which:
    run("run", f"{R}/experiments/names_pretrain.yaml", "-q")
    run("run", f"{R}/experiments/finetune_lr_sweep.yaml", "--repeats", "5", "-q")
    table("finetune_lr_sweep", [("best/val/accuracy", False), ("best/val/loss", True)])
