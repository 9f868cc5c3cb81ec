"""Python's cyclic garbage collector while a ``harness`` process sets up a run.

Setting up a run imports torch, MLflow, SQLAlchemy's models and torch._dynamo (through torch.optim). The heap grows
by about a million objects, and every time it has grown by a quarter the collector walks all of it: several full
passes that free almost nothing (measured with ``gc.callbacks``: bench/RESULTS.md, section 3).

So ``harness run`` and ``harness resume`` pause automatic collection when they start (:func:`pause`), and the job
resumes it just before the first training step (:func:`resume`): what is alive then (modules, the model, the data)
is frozen out of the collector's sight with ``gc.freeze`` and collection goes on as usual for everything made after
it. Every other command (``ui`` and ``dashboard`` serve for hours) never pauses it. A library caller who never paused
is untouched: :func:`resume` does nothing then. No library fits: this is process policy over the standard library's
``gc`` (two calls each way).
"""

from __future__ import annotations

import gc

__all__ = ["pause", "paused", "resume"]

_paused = False


def pause() -> None:
    """Stop automatic collection until :func:`resume` (a no-op when the collector is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what is alive now and collect automatically again, if :func:`pause` stopped collection; else nothing.

    Garbage cycles made during start-up are frozen with the rest and never freed; measured, they are a few thousand
    small objects (import-time closures and tracebacks) for the whole process."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def paused() -> bool:
    """Whether :func:`pause` has stopped collection and nothing has resumed it yet."""
    return _paused
