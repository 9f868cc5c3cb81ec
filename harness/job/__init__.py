"""One experiment end to end: build (``build``), log metrics (``logger``), train and finish (``runner``, ``finish``),
and what it reports (``outcome``). The sweep driver calls :func:`run` and :func:`resume` once per trial."""

from harness._lazy import lazy_exports

_EXPORTS = {"RunOutcome": "outcome", "load_run_spec": "runner", "resume": "runner", "run": "runner"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
