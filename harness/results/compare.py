"""Two or more runs side by side: the params that differ, final and best metrics, overlaid curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.results.frames import INFO_COLUMNS, Selector, params_of, runs_frame
from harness.results.metrics import load_metrics
from harness.results.store import open_store, select_runs
from harness.results.values import NOT_CHANGES, hashable, short

__all__ = ["Comparison", "compare", "curve_labels", "fmt_selector", "plain", "run_labels"]


@dataclass
class Comparison:
    runs: Any  # the runs() frame of the compared runs
    params: Any  # index: params that differ; columns: run labels
    metrics: Any  # index: status, stop_reason, steps, wall time, final and best metrics; columns: run labels
    labels: list[str]
    plot: Path | None = None
    bits_per_char: bool = False  # the metrics hold bpc/ rows (language-model runs)


def run_labels(df: Any) -> list[str]:
    names = list(df["run_name"].fillna(""))
    dup = {n for n in names if names.count(n) > 1 or not n}
    return [f"{n} ({rid[:8]})" if n in dup else n for n, rid in zip(names, df["run_id"])]


def compare(selectors: Selector, *, out: str | Path | None = "compare.png", metrics: Sequence[str] = ("train/loss", "val/loss"),
            uri: str | None = None, system: bool = False) -> Comparison:
    """Two or more runs side by side: the params that differ, final and best metrics, and (``out``) one PNG with a
    panel per metric and one curve per run.

    Language-model runs also get their losses in bits per character (``bpc/val/loss``, ``bpc/best/val/loss``, ...): a
    per-token loss depends on the tokenizer (a BPE token holds several characters), bits per character do not.
    ``system/*`` metrics (CPU, memory) are left out unless ``system``."""
    import pandas as pd

    from harness import plots

    client, uri = open_store(uri)
    selected = select_runs(client, selectors, uri=uri)
    if len(selected) < 2:
        raise UsageError(f"compare needs at least two runs; {fmt_selector(selectors)} selects {len(selected)}")
    df = runs_frame(client, selected)
    labels = run_labels(df)
    pcols = [c for c in params_of(df) if c not in NOT_CHANGES]
    diff = [c for c in pcols if len({hashable(plain(v)) for v in df[c]}) > 1]
    ptable = pd.DataFrame({lab: [plain(df.at[i, c]) for c in diff] for i, lab in zip(df.index, labels)}, index=pd.Index(diff, name="param"))
    rows = ["status", "stop_reason", "steps", "wall_time_s"]
    allp = set(params_of(df))
    mcols = [c for c in df.columns if c not in INFO_COLUMNS and c not in allp and not c.startswith("summary/")
             and (system or not c.startswith("system/"))]
    rows += mcols
    mtable = pd.DataFrame({lab: [plain(df.at[i, c]) for c in rows] for i, lab in zip(df.index, labels)}, index=pd.Index(rows, name="metric"))
    bpc = _bits_per_char(df, [c for c in mcols if c.endswith("loss")])
    if not bpc.empty:
        bpc.columns = labels
        mtable = pd.concat([mtable, bpc])
    path = None
    if out is not None:
        keys = [k for k in metrics if k in df.columns]
        if keys:
            hist = load_metrics(client, list(df["run_id"]), keys)
            panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
            for k in keys:
                panels[k] = {}
                for rid, lab in zip(df["run_id"], labels):
                    h = hist[(hist["run_id"] == rid) & (hist["metric"] == k)]
                    panels[k][lab] = (h["step"].tolist(), h["value"].tolist())
            names = dict(zip(labels, curve_labels(df, labels, diff)))
            panels = {k: {names[lab]: c for lab, c in v.items()} for k, v in panels.items()}
            path = plots.save(plots.overlay_panels(panels, title=f"{len(labels)} runs compared"), out)
    return Comparison(runs=df, params=ptable, metrics=mtable, labels=labels, plot=path, bits_per_char=not bpc.empty)


def _bits_per_char(df: Any, losses: Sequence[str]) -> Any:
    """``bpc/<loss>`` rows for language-model runs: the loss / ln 2 x the corpus's tokens per character (from the
    derived token and character counts every run logs). Empty unless every run has them."""
    import math

    import pandas as pd

    need = ("derived.corpus_chars", "derived.train_tokens", "derived.val_tokens")
    if not all(c in df.columns and df[c].notna().all() for c in need):
        return pd.DataFrame()
    per_char = (df["derived.train_tokens"].astype(float) + df["derived.val_tokens"].astype(float)) / df["derived.corpus_chars"].astype(float)
    rows = {f"bpc/{c}": [float(v) * float(r) / math.log(2) if v == v else None for v, r in zip(df[c], per_char)] for c in losses}
    return pd.DataFrame(rows).T.rename_axis("metric") if rows else pd.DataFrame()


def curve_labels(df: Any, labels: Sequence[str], params: Sequence[str], limit: int = 3) -> list[str]:
    """Legend entries: the run label plus the values of up to ``limit`` differing params (``lr=0.001``)."""
    out = []
    for i, lab in enumerate(labels):
        bits = [f"{p.split('.')[-1]}={short(plain(df[p].iloc[i]))}" for p in list(params)[:limit]]
        out.append(f"{lab}: {', '.join(bits)}" if bits else lab)
    return out


def plain(v: Any) -> Any:
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def fmt_selector(sel: Selector) -> str:
    return repr(sel) if isinstance(sel, str) else " ".join(sel)
