"""What runs next: one scheduler for grids, samplers and repeated seeds.

A sweep is a set of **configurations** (the swept values), each run under the same list of **seeds** (one seed, the
spec's, unless the sweep repeats). Every run is one trial of the study, an attempt at the seed run (configuration,
seed) (see :mod:`harness.sweep.attempts`), so the sampler learns from every run and Optuna's retries, heartbeats and
states apply to each. The configurations are written into the study's user attributes as they are made (``c000``,
``c001``, ...: their order of birth, stable however the sweep grows), with the paired rule's stops beside them.

Under the study lock (:func:`harness.sweep.claim.take`) the scheduler, in this order:

1. settles: the paired rule (if the sweep has it) stops the configurations that are clearly worse;
2. takes a queued attempt first (a retry resumes its run where it stopped), closing one whose configuration is
   stopped or whose trial is no seed run;
3. queues the retry of an attempt that ended without one (its worker died between failing it and queueing it);
4. picks the next seed run by :func:`next_seed_run` (a new configuration when the rule says so: the grid's next point,
   or the sampler's proposal), queues it with its values fixed and takes it.

Every step reads the study afresh and writes nothing that another step must undo, so whichever worker holds the lock
next repairs what a dead one left half-done.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.spec import Spec
from harness.sweep.attempts import CONFIG, REPEAT, SEED, Attempts, Retry, current, gave_up, identity
from harness.sweep.pruning import STOP, PairedPruner
from harness.sweep.study import grid_points, point_key, suggest, to_optuna
from harness.train.events import StopReason

__all__ = ["REGISTRY", "Configuration", "Scheduler", "SeedRun", "config_label", "configurations", "next_seed_run", "seed_run"]

REGISTRY = "harness.configuration."  # study user attribute REGISTRY + id: the configuration's values and label (JSON)


def config_label(params: dict[str, Any], fallback: str) -> str:
    """``lr=0.01, batch_size=4``: the swept values by their last path segment (``fallback`` when nothing is swept)."""
    if not params:
        return fallback
    return ", ".join(f"{path.split('.')[-1]}={_short(v)}" for path, v in params.items())


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclass
class Configuration:
    """A configuration with its seed runs' current attempts (by seed)."""

    cid: str
    params: dict[str, Any]
    label: str
    stopped: str | None = None  # why the paired rule stopped it
    runs: dict[int, Any] = field(default_factory=dict)  # seed -> current attempt (FrozenTrial)

    @property
    def order(self) -> int:
        return int(self.cid[1:])

    def value(self, seed: int) -> float:
        t = self.runs.get(seed)
        return float(t.value) if t is not None and t.state.name == "COMPLETE" and t.value is not None else math.nan

    def mean(self) -> float | None:
        vals = [self.value(s) for s in self.runs if math.isfinite(self.value(s))]
        return math.fsum(vals) / len(vals) if vals else None

    def failed(self) -> Any | None:
        """The attempt of a seed run that failed for good, if any (the configuration then gets no more seeds)."""
        return next((t for _, t in sorted(self.runs.items()) if gave_up(t)), None)

    def state(self, seeds: Sequence[int]) -> str:
        """PRUNED (stopped by the paired rule, or its run pruned), FAIL, COMPLETE, or RUNNING while seeds are left."""
        states = {self.runs[s].state.name if s in self.runs else "WAITING" for s in seeds}
        if self.stopped is not None:
            return "PRUNED"
        if self.failed() is not None:
            return "FAIL"
        if states == {"COMPLETE"}:
            return "COMPLETE"
        if states <= {"COMPLETE", "PRUNED"}:
            return "PRUNED"
        return "RUNNING"

    def open(self, seeds: Sequence[int]) -> bool:
        """Still wants seed runs: not stopped, nothing failed for good, and some seed not handed out yet."""
        return self.stopped is None and self.failed() is None and any(s not in self.runs for s in seeds)


@dataclass(frozen=True)
class SeedRun:
    """What one attempt runs: a configuration (its id, values, label) under one seed."""

    cid: str
    params: dict[str, Any]
    label: str
    seed: int
    repeat: int


def seed_run(study: Any, trial: Any) -> SeedRun:
    """The seed run that ``trial`` (taken by :meth:`Scheduler.next`) is an attempt at, from the study's registry."""
    cid, seed = identity(trial)  # type: ignore[misc]  # next() hands out seed runs only
    entry = json.loads(study.user_attrs[REGISTRY + cid])
    return SeedRun(cid, entry["params"], entry["label"], seed, int(trial.user_attrs.get(REPEAT, 0)))


def configurations(study: Any, trials: list[Any] | None = None) -> list[Configuration]:
    """The study's configurations in their order of birth, each with its seed runs' current attempts."""
    attrs = study.user_attrs
    out = {}
    for key, raw in attrs.items():
        if key.startswith(REGISTRY):
            cid = key[len(REGISTRY):]
            entry = json.loads(raw)
            out[cid] = Configuration(cid, entry["params"], entry["label"], attrs.get(STOP + cid))
    for (cid, seed), t in current(trials if trials is not None else study.get_trials(deepcopy=False)).items():
        if cid in out:
            out[cid].runs[seed] = t
    return sorted(out.values(), key=lambda c: c.order)


def next_seed_run(configs: Sequence[Configuration], *, seeds: Sequence[int], grid: bool, lower_is_better: bool,
                  can_add: bool) -> tuple[str | None, int] | None:
    """The seed run to start next, as (configuration id, seed); (None, seed) for a new configuration; None when the
    sweep has nothing left to start.

    * A grid goes **seed by seed**: every open configuration's first seed, then every one's second, and so on, so the
      paired rule can compare all of them after two seeds. Within a round the configuration with the **best mean so
      far goes first** (every other one is compared with it, so its seeds settle the most), then those with no result
      yet, oldest first; the grid's next point joins at the end of the first round.
    * A sampler goes **configuration by configuration**: the oldest open configuration's next seed, so that the
      sampler learns from whole configurations; a new one (its proposal) only once every open one has all its seeds
      handed out. Seeds of one configuration still run side by side on several workers."""
    open_ = [c for c in configs if c.open(seeds)]
    if grid:
        def rank(c: Configuration) -> tuple[int, float, int]:
            m = c.mean()
            return (1, 0.0, c.order) if m is None else (0, m if lower_is_better else -m, c.order)

        for k, seed in enumerate(seeds):
            lacking = [c for c in open_ if seed not in c.runs]
            if lacking:
                return min(lacking, key=rank).cid, seed
            if k == 0 and can_add:
                return None, seed
        return None
    for c in sorted(open_, key=lambda c: c.order):
        seed = next(s for s in seeds if s not in c.runs)
        return c.cid, seed
    return (None, seeds[0]) if can_add else None


class Scheduler:
    """A worker's view of the sweep: the study, the base spec, and how many configurations it runs (``total``).
    :meth:`next` and :meth:`settle` run under the study lock."""

    def __init__(self, attempts: Attempts, base: Spec, total: int, *, deadline: float | None = None):
        sw = base.sweep
        assert sw is not None
        self.attempts = attempts
        self.study = attempts.study
        self.base = base
        self.total = total
        self.deadline = deadline
        self.seeds = sw.seed_list(base.seed)
        self.grid = sw.sampler == "grid"
        self.lower = sw.objective.direction == "minimize"

    # -- 1. settling --------------------------------------------------------------------------------------------

    def settle(self, configs: list[Configuration] | None = None) -> list[Configuration]:
        """Stop the configurations the paired rule finds clearly worse (a stop is written once and kept)."""
        import numpy as np

        configs = configurations(self.study) if configs is None else configs
        pruner = self.study.pruner
        if not isinstance(pruner, PairedPruner) or not configs:
            return configs
        values = np.array([[c.value(s) for s in self.seeds] for c in configs])
        open_ = np.array([c.stopped is None and c.failed() is None and c.state(self.seeds) != "COMPLETE" for c in configs])
        found = pruner.stops(values, open_, lower_is_better=self.lower)
        for i in np.flatnonzero(found.stop):
            c, rival = configs[i], configs[int(found.rival[i])]
            why = (f"worse than {rival.cid} on {int(found.n[i])} shared seeds (paired rule: one-sided p = {float(found.p[i]):.2g} "
                   f"<= {found.level:.2g}, p_threshold {pruner.p_threshold:g} spread over every look and pair)")
            self.study.set_user_attr(STOP + c.cid, why)
            c.stopped = why
        return configs

    # -- 2-4. the next trial ------------------------------------------------------------------------------------

    def next(self) -> Any | None:
        """The next trial to run (asked for, its values fixed), or None when nothing is left (or time is up)."""
        configs = self.settle()
        if self.deadline is not None and time.time() > self.deadline:
            return None
        by_id = {c.cid: c for c in configs}
        while self.study.get_trials(deepcopy=False, states=(_state("WAITING"),)):
            trial = _ask(self.study)
            key = identity(trial)
            cfg = by_id.get(key[0]) if key is not None else None
            if cfg is None:
                _close(self.study, trial, "FAIL", "not a seed run: left by a worker that died while proposing it")
            elif current(self.study.get_trials(deepcopy=False))[key].number != trial.number:  # type: ignore[index]
                _close(self.study, trial, "FAIL", "a second retry of one seed run: the newer attempt continues its run")
            elif cfg.stopped is not None or cfg.failed() is not None:
                _close(self.study, trial, "PRUNED" if cfg.stopped else "FAIL", f"its configuration {cfg.cid} stopped: "
                       f"{cfg.stopped or 'a seed run failed'}")
            else:
                return self._fix(trial, cfg)
        if self._repair(configs):
            return self.next()
        can_add = self._free_point(configs) is not None if self.grid else len(configs) < self.total
        pick = next_seed_run(configs, seeds=self.seeds, grid=self.grid, lower_is_better=self.lower, can_add=can_add)
        if pick is None:
            return None
        cid, seed = pick
        if cid is None and not self.grid:
            return self._propose(len(configs))
        cfg = self._register(len(configs), self._free_point(configs)) if cid is None else by_id[cid]  # type: ignore[arg-type]
        # A grid's values stay out of the trial's Optuna params: Optuna fixes a categorical's choices for the whole
        # study, and a grid may grow. The registry holds them (and MLflow's params).
        fixed = {} if self.grid else {p: to_optuna(v) for p, v in cfg.params.items()}
        self.study.enqueue_trial(fixed, skip_if_exists=False,
                                 user_attrs={CONFIG: cfg.cid, SEED: seed, REPEAT: self.seeds.index(seed)})
        return self._fix(_ask(self.study), cfg)

    def _repair(self, configs: list[Configuration]) -> bool:
        """Queue the retry of every seed run whose current attempt ended FAIL without one (and without giving up)."""
        fixed = False
        for c in configs:
            for t in c.runs.values():
                if t.state.name == "FAIL" and not gave_up(t):
                    Retry()(self.study, t)
                    fixed = True
        return fixed

    def _free_point(self, configs: list[Configuration]) -> dict[str, Any] | None:
        """The grid's first point (of its first ``total``) that is no configuration yet."""
        held = {point_key(c.params) for c in configs}
        return next((p for p in grid_points(self.base)[: self.total] if point_key(p) not in held), None)

    def _register(self, n: int, params: dict[str, Any]) -> Configuration:
        cfg = Configuration(f"c{n:03d}", params, config_label(params, self.base.name))
        self.study.set_user_attr(REGISTRY + cfg.cid, json.dumps({"params": params, "label": cfg.label}, default=str))
        return cfg

    def _propose(self, n: int) -> Any:
        """A new configuration from the sampler: its first seed run's trial, which the sampler fills in."""
        sw = self.base.sweep
        assert sw is not None
        trial = _ask(self.study)
        params = {path: suggest(trial, path, space) for path, space in sw.params.items()}
        cfg = self._register(n, params)
        for key, value in ((CONFIG, cfg.cid), (SEED, self.seeds[0]), (REPEAT, 0)):
            trial.set_user_attr(key, value)
        return trial

    def _fix(self, trial: Any, cfg: Configuration) -> Any:
        """Record the configuration's values as the trial's params (they are fixed: the sampler does not pick)."""
        sw = self.base.sweep
        assert sw is not None
        if not self.grid:
            for path, space in sw.params.items():
                suggest(trial, path, space)
        return trial

    def stopped(self, cid: str) -> str | None:
        """Why configuration ``cid`` wants no more seed runs (the paired rule), or None (read by any process)."""
        return self.study.user_attrs.get(STOP + cid)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _ask(study: Any) -> Any:
    with warnings.catch_warnings():
        # We beat the heartbeat ourselves (see harness.sweep.fence); Optuna warns that it expects Study.optimize to do it.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _close(study: Any, trial: Any, state: str, why: str) -> None:
    """End a trial that was taken only to be put away (it must not run)."""
    trial.set_user_attr("stop_reason", StopReason.PRUNED.value if state == "PRUNED" else StopReason.FAILED.value)
    trial.set_user_attr("fail_reason", why)
    study.tell(trial, state=_state(state))
