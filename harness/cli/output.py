"""What the CLI prints: errors, run and sweep summaries, tables. Everything the user reads comes from here or from a
command module; the library never prints."""

from __future__ import annotations

import math
import sys
from typing import Any

__all__ = ["configs_view", "print_err", "print_frame", "print_run_summary", "print_sweep_summary", "shown_text", "shown_url"]


def print_err(msg: str) -> None:
    print(shown_text(msg), file=sys.stderr, flush=True)


def _fmt(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ui_hint(uri: str) -> str:
    uri = shown_url(uri)
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return f"harness ui   (or: mlflow ui --backend-store-uri {uri})"
    return f"open {uri} in a browser"


def shown_url(url: str) -> str:
    """A storage URL or tracking URI as printed: without its password (see harness.tracking.redact)."""
    from harness.tracking.redact import redact_url

    return redact_url(url)


def shown_text(text: str) -> str:
    """A message as printed: any URL in it without its password."""
    if "://" not in text:
        return text
    from harness.tracking.redact import redact_text

    return redact_text(text)


def print_run_summary(out: Any) -> None:
    f = out.facts
    head = {"FINISHED": "finished", "FAILED": "FAILED", "KILLED": "stopped"}.get(out.status, out.status)
    print(f"\nrun {out.run_id} {head}: stop_reason={out.stop_reason}" + (f" ({shown_text(out.message)})" if out.message else ""))
    epochs = f" ({out.epochs} epochs)" if out.epochs else ""
    print(f"  steps        {out.steps}{epochs} in {out.wall_time_s:.1f}s")
    if "val/loss" in out.final or out.watch == "val/loss":
        best = f", best {_fmt(out.best_metric)} at step {out.best_step}" if out.watch == "val/loss" and out.best_metric is not None else ""
        print(f"  val/loss     final {_fmt(out.final.get('val/loss'))}{best}")
    if "train/loss" in out.final:
        print(f"  train/loss   final {_fmt(out.final.get('train/loss'))} (last step), eval {_fmt(out.final.get('train/loss_eval'))}")
    if "val/accuracy" in out.final and out.watch != "val/accuracy":  # a classifier's headline metric, whatever it watched
        print(f"  val/accuracy final {_fmt(out.final['val/accuracy'])}")
    if out.watch != "val/loss" and out.best_metric is not None:
        final = f"final {_fmt(out.final[out.watch])}, " if out.watch in out.final else ""
        print(f"  {out.watch} {final}best {_fmt(out.best_metric)} at step {out.best_step}")
    if f.get("initial_loss") is not None:
        if "ln_labels" in f:  # a classifier guesses among its labels, not its vocabulary
            print(f"  sanity       step-0 loss {f['initial_loss']:.4f} vs ln(labels) {f['ln_labels']:.4f} ({f['n_labels']} labels)")
        else:
            print(f"  sanity       step-0 loss {f['initial_loss']:.4f} vs ln(vocab) {f['ln_vocab']:.4f} (vocab {f['vocab_size']})")
    n, trainable = f.get("n_parameters", 0), f.get("trainable_parameters")
    trains = f" ({trainable:,} train)" if trainable is not None and trainable != n else ""
    print(f"  model        {n:,} parameters{trains}, {f.get('steps_per_epoch')} steps/epoch, {f.get('tokens_per_step')} tokens/step")
    if out.grad:
        g = out.grad
        pct = 100.0 * g["clipped"] / max(g["steps"], 1)
        # a resumed run's statistics cover the steps this session trained, not the whole run: say so
        scope = f" (the {int(g['steps'])} steps since the resume)" if out.resumed_from and int(g["steps"]) < out.steps else ""
        print(f"  grad norm    max {g['max']:.3f} mean {g['mean']:.3f} final {g['final']:.3f}; clipped {int(g['clipped'])}/{int(g['steps'])} "
              f"steps ({pct:.1f}%){scope}")
    if out.stop_reason == "early_stopped":
        print(f"  early stop   after epoch {out.epochs} (step {out.steps}); best {out.watch} {_fmt(out.best_metric)} at step {out.best_step}")
    print(f"  experiment   {out.experiment} (id {out.experiment_id})")
    print(f"  tracking     {shown_url(out.tracking_uri)}")
    print(f"  browse       {_ui_hint(out.tracking_uri)}")
    if out.stop_reason == "interrupted":
        print(f"  resume with  harness resume {out.run_id}")


def print_sweep_summary(result: Any) -> None:
    import pandas as pd

    df = result.table
    print()
    if df.empty:
        print(f"sweep {result.study_name}: no trials")
        return
    if result.configs is not None:
        print_frame(configs_view(result.configs, result.objective))
        seeds = ", ".join(map(str, result.seeds or []))
        print(f"\n{len(df)} seed runs (seeds {seeds}; one row each in the parent run's trials.csv and in harness results --runs)")
        if result.procedure:
            print(result.procedure)
    else:
        cols = [c for c in df.columns if c not in ("ln_vocab", "fail_reason", "final_train_loss_step")]
        show = df[cols].copy()
        if "run_id" in show:
            show["run_id"] = show["run_id"].map(lambda r: r[:8] if isinstance(r, str) else "-")
        with pd.option_context("display.max_columns", 50, "display.width", 200, "display.float_format", lambda v: f"{v:.4g}"):
            print(show.to_string(index=False))
    c = result.counts
    unit = "configurations: " if result.configs is not None else ""
    print(f"\nsweep {result.study_name}: {unit}{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed"
          + (f", {c['running']} unfinished" if c.get("running") else ""))
    if result.best and result.configs is not None:
        b = result.best
        lo, hi = b.get("ci", [math.nan, math.nan])
        ci = f" (95 % CI {lo:.4f} to {hi:.4f}, n={b['n']})" if b.get("n", 0) >= 2 else f" (n={b.get('n')})"
        print(f"best configuration {b['config_id']} ({b['config']}): mean {result.objective} = {b['value']:.4f}{ci}")
    elif result.best:
        print(f"best trial {result.best['trial']}: {result.objective} = {result.best['value']:.4f} with {result.best['params']}")
    failed = df[df["fail_reason"].notna()] if "fail_reason" in df else df.iloc[0:0]
    for _, row in failed.iterrows():
        print(f"  trial {row['trial']} failed: {shown_text(str(row['fail_reason']).splitlines()[0])[:300]}")
    print(f"parent run {result.parent_run_id}; study '{result.study_name}' in {shown_url(result.storage)}")
    print(f"tracking: {shown_url(result.tracking_uri)}")
    if result.still_running:
        print(f"{result.still_running} trial{'s' if result.still_running != 1 else ''} still running in other invocations; "
              "the last one to finish closes the parent run")
    if result.interrupted:
        print("interrupted: run the same command again to resume the study")


def _pm(row: Any, col: str) -> str:
    """``mean ± half-width`` of an aggregated column (``mean (n=1)`` without an interval)."""
    mean, lo, hi = row.get(f"{col}_mean"), row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
    if mean is None or mean != mean:
        return "-"
    if lo is None or lo != lo:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {(hi - lo) / 2:.2g}"


def configs_view(configs: Any, objective: str) -> Any:
    """A configurations table as printed: mean ± 95 % half-width per headline metric, the difference from the best
    with its interval, and the verdict."""
    import pandas as pd

    rows = []
    for _, r in configs.iterrows():
        row = {"config": r.get("config_id"), "values": r.get("config")}
        if "config_state" in configs.columns:
            row["state"] = str(r.get("config_state", "")).lower()
        row["n"] = r.get("n")
        row[f"objective ({objective})"] = _pm(r, "objective")
        # the sweep's table and harness results name the headline metrics differently; the first one present is shown
        for name, cols in (("best val acc", ("best_val_accuracy", "best/val/accuracy")),
                           ("final train loss", ("final_train_loss", "train/loss_epoch", "train/loss"))):
            col = next((c for c in cols if f"{c}_mean" in configs.columns and configs[f"{c}_mean"].notna().any()), None)
            if col is not None:
                row[name] = _pm(r, col)
        d, lo, hi = r.get("vs_best"), r.get("vs_best_low"), r.get("vs_best_high")
        row["vs best [95 % CI]"] = "-" if d is None or d != d else (f"{d:+.4g}" if lo != lo else f"{d:+.4g} [{lo:+.3g}, {hi:+.3g}]")
        row["verdict"] = r.get("verdict") if isinstance(r.get("verdict"), str) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    s = str(v)
    return "-" if s in ("<NA>", "NaT", "nan", "None") else shown_text(s)  # a fail_reason, a note: no secret printed


def print_frame(df: Any, *, index: bool = False) -> None:
    print(frame_text(df, index=index))


def frame_text(df: Any, *, index: bool = False) -> str:
    """A table as :func:`print_frame` prints it."""
    import pandas as pd

    show = df.copy()
    for c in show.columns:
        show[c] = [_cell(v) for v in show[c]]
    if index:
        show.index = [str(i) for i in show.index]
    with pd.option_context("display.max_columns", 200, "display.width", 250, "display.max_colwidth", 60):
        return str(show.to_string(index=index))
