"""Statistics over seeds: intervals, comparisons, and the verdicts and stops that must hold under the null.

``intervals`` (a mean's t interval, one chosen comparison, the curves' bands), ``pairs`` (every pair's paired t-test
at once, and Holm), ``best`` (verdicts against the best: family-wise 5 %), ``sequential`` (the paired rule that stops
a configuration early: at most ``p_threshold`` over all its looks). numpy and scipy only.
"""

from harness._lazy import lazy_exports

_EXPORTS = {"ALPHA": "intervals", "LEVEL": "intervals", "Difference": "intervals", "Interval": "intervals", "band": "intervals",
            "compare": "intervals", "interval": "intervals", "verdict": "intervals", "holm": "pairs", "pair_tests": "pairs",
            "procedure": "best", "summarize_groups": "best", "versus_best": "best", "paired_rule": "sequential",
            "test_level": "sequential"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
