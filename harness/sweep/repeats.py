"""Repeated seeds: every configuration of a sweep runs under the same list of seeds, and is judged by its mean.

Two Optuna studies share the storage:

* the study itself (``<study>``) holds one trial per **configuration**: what the sampler proposes and learns from.
  Its intermediate values are the seed runs' objectives, keyed by the repeat index (as Optuna's WilcoxonPruner
  expects), and its value is their mean once every seed has run;
* the seed queue (``<study>.seeds``) holds one trial per **seed run**, one MLflow child run each. Workers take these
  exactly as they take the trials of an unrepeated sweep (under the study lock, with heartbeats, crash retries that
  resume the same MLflow run, and the multi-machine path), so all of that holds per seed run.

Under the study lock, :meth:`Repeats.settle` folds finished seed runs into their configuration (intermediate values;
the mean once all seeds are in; FAIL when a seed run failed for good) and asks the pruner whether an open
configuration is clearly worse than the best. It is idempotent, so whichever worker holds the lock next repairs what a
dead one left half-done.

Which seed run comes next: a grid goes seed by seed across its configurations (every configuration's first seed,
then every second seed, ..., the best mean so far first within a round), so the paired rule can compare all of them
after two seeds and the leader's seeds, which every comparison needs, come first; a sampler finishes one
configuration before it asks for the next (each of its seeds on whichever worker is free), so it learns from whole
configurations.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

from harness.spec import Spec
from harness.stats import one_sided_worse_p
from harness.sweep.storage import TrialStore, retried_numbers
from harness.sweep.study import GRID_POINT, from_optuna, grid_points, point_key, queue_name, suggest, to_optuna
from harness.train.events import StopReason

__all__ = ["CONFIG", "REPEAT", "SEED", "PairedPruner", "Repeats", "config_id", "config_label", "queue_name"]

CONFIG = "harness.config"  # on a seed run's trial: the number of its configuration's trial
REPEAT = "harness.repeat"  # on a seed run's trial: its index in the seed list
SEED = "harness.seed"  # on a seed run's trial: its seed
LABEL = "harness.label"  # on a configuration's trial: its swept values, readable


def config_id(number: int) -> str:
    """A configuration's stable id: its trial number in the study (``c003``)."""
    return f"c{number:03d}"


def config_label(params: dict[str, Any], fallback: str) -> str:
    """``lr=0.01, batch_size=4``: the swept values by their last path segment (``fallback`` when nothing is swept)."""
    if not params:
        return fallback
    return ", ".join(f"{path.split('.')[-1]}={_short(v)}" for path, v in params.items())


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------------------- the rule


def _base_pruner() -> type:
    import optuna

    return optuna.pruners.BasePruner  # type: ignore[no-any-return]


class PairedPruner(_base_pruner()):  # type: ignore[misc]
    """Stop a configuration that is clearly worse than the best one on the seeds both have run.

    The best is the open or finished configuration with the best mean over its own seeds; the test is the one-sided
    paired t-test on the shared seeds (at least ``n_startup_steps`` of them), and the configuration stops when its p
    is below ``p_threshold``. It reads the intermediate values as WilcoxonPruner does (step = seed index), so it is
    an Optuna pruner like any other; see :mod:`harness.stats` for why not Wilcoxon itself."""

    def __init__(self, *, p_threshold: float = 0.05, n_startup_steps: int = 2):
        self.p_threshold = p_threshold
        self.n_startup_steps = max(2, n_startup_steps)

    def prune(self, study: Any, trial: Any) -> bool:
        return self.evidence(study, trial) is not None

    def evidence(self, study: Any, trial: Any) -> tuple[int, float, int] | None:
        """(best configuration's number, p, shared seeds) when ``trial`` is to stop, else None."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        mine = {k: v for k, v in trial.intermediate_values.items() if math.isfinite(v)}
        if len(mine) < self.n_startup_steps:
            return None
        lower = study.direction == StudyDirection.MINIMIZE
        rivals = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
                  if t.number != trial.number and len(set(t.intermediate_values) & set(mine)) >= self.n_startup_steps]
        if not rivals:
            return None

        def mean(t: Any) -> float:
            vals = [v for v in t.intermediate_values.values() if math.isfinite(v)]
            return sum(vals) / len(vals) if vals else math.inf if lower else -math.inf

        best = min(rivals, key=mean) if lower else max(rivals, key=mean)
        shared = sorted(set(best.intermediate_values) & set(mine))
        p = one_sided_worse_p([mine[k] for k in shared], [best.intermediate_values[k] for k in shared], lower_is_better=lower)
        return (best.number, p, len(shared)) if p < self.p_threshold else None


# ----------------------------------------------------------------------------------------------------------- the queue


class Repeats:
    """A worker's view of a repeated sweep: the configurations study, its seed queue, and the rules above.
    Every method but :meth:`stopped` runs under the study lock."""

    def __init__(self, storage: Any, configs: Any, queue: Any, base: Spec, total: int):
        sw = base.sweep
        assert sw is not None
        self.configs = configs
        self.queue = queue
        self.base = base
        self.total = total  # configurations the sweep runs in all
        self.seeds = sw.seed_list(base.seed)
        self.store = TrialStore(storage, configs.study_name)

    # -- settling ---------------------------------------------------------------------------------------------

    def seed_trials(self) -> dict[tuple[int, int], Any]:
        """(configuration, repeat) -> the seed run's current trial. A retried attempt is replaced by its retry, and a
        crashed or interrupted attempt whose retry was never queued holds nothing."""
        trials = self.queue.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        out: dict[tuple[int, int], Any] = {}
        for t in trials:
            if t.number in retried or CONFIG not in t.user_attrs:
                continue
            if t.state.name == "FAIL" and StopReason.is_retry(t.user_attrs.get("stop_reason")):
                continue
            out[(int(t.user_attrs[CONFIG]), int(t.user_attrs[REPEAT]))] = t
        return out

    def settle(self) -> None:
        """Fold finished seed runs into their configurations, then stop those the pruner finds clearly worse."""
        from optuna.trial import TrialState

        seeds = self.seed_trials()
        for ct in self.configs.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            mine = {k: t for (c, k), t in seeds.items() if c == ct.number}
            done = {k: t.value for k, t in mine.items() if t.state == TrialState.COMPLETE}
            for k, v in sorted(done.items()):
                if k not in ct.intermediate_values:
                    self.store.report(ct.number, k, v)
            failed = sorted(k for k, t in mine.items() if t.state == TrialState.FAIL)
            if failed:
                t = mine[failed[0]]
                reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("stop_reason") or "failed"
                self.store.set_attr(ct.number, "fail_reason", f"seed {self.seeds[failed[0]]} (repeat {failed[0]}): {reason}"[:2000])
                self.store.set_attr(ct.number, "stop_reason", t.user_attrs.get("stop_reason") or StopReason.FAILED.value)
                self.configs.tell(ct.number, state=TrialState.FAIL)
            elif len(done) == len(self.seeds):
                self.configs.tell(ct.number, math.fsum(done[k] for k in range(len(self.seeds))) / len(self.seeds))
        pruner = self.configs.pruner
        if not isinstance(pruner, PairedPruner):
            return
        for ct in self.configs.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            found = pruner.evidence(self.configs, self.store.frozen(ct.number))
            if found is not None:
                best, p, n = found
                self.store.set_attr(ct.number, "stop_reason", StopReason.PRUNED.value)
                self.store.set_attr(ct.number, "fail_reason", f"worse than {config_id(best)} on {n} shared seeds "
                                                              f"(paired t-test, one-sided p = {p:.3g} < {pruner.p_threshold})")
                self.configs.tell(ct.number, state=TrialState.PRUNED)

    # -- handing out seed runs --------------------------------------------------------------------------------

    def next_trial(self, deadline: float | None) -> Any | None:
        """The next seed run to take (a queued retry first), or None when nothing is left (or time is up)."""
        from optuna.trial import TrialState

        self.settle()
        if deadline is not None and time.time() > deadline:
            return None
        if self.queue.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return _ask(self.queue)
        taken = set(self.seed_trials())
        configs = self.configs.get_trials(deepcopy=False)
        grid = self.base.sweep.sampler == "grid"  # type: ignore[union-attr]
        rank = self._rank(configs)
        candidates: list[tuple[tuple[float, float], int | None, int]] = []  # (order, configuration or None: a new one, repeat)
        for ct in configs:
            if ct.state == TrialState.RUNNING:
                for k in range(len(self.seeds)):
                    if (ct.number, k) not in taken:
                        candidates.append(((k, rank[ct.number]) if grid else (ct.number, k), ct.number, k))
        if len(configs) < self.total and (not grid or self._free_point(configs) is not None):
            candidates.append(((0, math.inf) if grid else (math.inf, 0), None, 0))
        if not candidates:
            return None
        _, number, k = min(candidates, key=lambda c: c[0])
        config = self._open_config(configs) if number is None else self.configs.get_trials(deepcopy=False)[number]
        params = from_optuna(config.params)
        self.queue.enqueue_trial({p: to_optuna(v) for p, v in params.items()}, skip_if_exists=False,
                                 user_attrs={CONFIG: config.number, REPEAT: k, SEED: self.seeds[k]})
        return _ask(self.queue)

    def _rank(self, configs: list[Any]) -> dict[int, float]:
        """A grid's configurations in the order their next seeds go: the best mean so far first (every other
        configuration is compared with it, so its seeds settle the most), then those with no result yet, by number."""
        lower = self.configs.direction.name == "MINIMIZE"

        def key(t: Any) -> tuple[int, float, int]:
            vals = [v for v in t.intermediate_values.values() if math.isfinite(v)]
            if not vals:
                return (1, 0.0, t.number)
            mean = sum(vals) / len(vals)
            return (0, mean if lower else -mean, t.number)

        return {t.number: float(i) for i, t in enumerate(sorted(configs, key=key))}

    def _free_point(self, configs: list[Any]) -> dict[str, Any] | None:
        held = {t.user_attrs.get(GRID_POINT) for t in configs}
        return next((p for p in grid_points(self.base)[: self.total] if point_key(p) not in held), None)

    def _open_config(self, configs: list[Any]) -> Any:
        """A new configuration's trial: the grid's next free point, or the sampler's pick."""
        sw = self.base.sweep
        assert sw is not None
        if sw.sampler == "grid":
            point = self._free_point(configs)
            assert point is not None
            self.configs.enqueue_trial({k: to_optuna(v) for k, v in point.items()}, user_attrs={GRID_POINT: point_key(point)},
                                       skip_if_exists=False)
        trial = _ask(self.configs)
        params = {path: suggest(trial, path, space) for path, space in sw.params.items()}
        trial.set_user_attr(LABEL, config_label(params, self.base.name))
        return self.store.frozen(trial.number)

    # -- while a seed runs --------------------------------------------------------------------------------------

    def stopped(self, number: int) -> str | None:
        """Why configuration ``number`` no longer wants seed runs (pruned, failed), or None while it is open."""
        from optuna.trial import TrialState

        t = self.store.frozen(number)
        if t.state == TrialState.RUNNING:
            return None
        return t.user_attrs.get("fail_reason") or f"configuration {config_id(number)} ended {t.state.name}"


def _ask(study: Any) -> Any:
    with warnings.catch_warnings():
        # We beat the heartbeat ourselves (see worker._heartbeat); Optuna warns that it expects Study.optimize to do it.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()
