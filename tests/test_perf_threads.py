"""Thread and worker choices, as pure functions and with a fake CPU clock: never more threads than the CPUs other
processes leave free, back up only after a calm spell, the trainer asks before every step and evaluation batch and
puts the count back at the end; sweeps pick one-thread workers only for small, long-enough trials."""

from __future__ import annotations

import pytest
import torch

from harness.spec import spec_from_dict
from harness.sweep.driver import _threads_per_worker, auto_workers, workers_for
from harness.train.runtime import CpuSample, ThreadGovernor, choose_threads, keep_freed_memory, others_busy, torch_threads


@pytest.mark.parametrize(("current", "cap", "cpus", "others", "calm", "expected"), [
    (2, 2, 2, 0.0, 0, 2),  # alone: all CPUs
    (2, 2, 2, 0.3, 0, 2),  # a light process next door: keep both threads
    (2, 2, 2, 0.6, 0, 1),  # another process takes more than half a CPU: drop one thread at once
    (2, 2, 2, 1.0, 0, 1),  # another training process (its threads spinning against ours)
    (2, 2, 2, 2.0, 0, 1),  # never below one thread
    (1, 2, 2, 1.0, 5, 1),  # the other one still runs: stay at one however long it lasts
    (1, 2, 2, 0.1, 2, 1),  # it stopped: not back up before a calm spell ...
    (1, 2, 2, 0.1, 3, 2),  # ... then back up
    (1, 2, 2, 0.4, 9, 1),  # the extra CPU is not idle enough to go back up (hysteresis band 0.25 .. 0.5)
    (8, 8, 8, 3.2, 0, 5),  # a bigger machine: as many threads as CPUs free (rounded)
    (5, 8, 8, 0.0, 3, 8),
    (1, 1, 2, 0.0, 9, 1),  # never above the cap
])
def test_choose_threads(current, cap, cpus, others, calm, expected):
    assert choose_threads(current, cap=cap, cpus=cpus, others=others, calm_samples=calm) == expected


def test_others_busy_subtracts_this_process():
    a = CpuSample(wall=10.0, busy=100.0, own=40.0)
    b = CpuSample(wall=12.0, busy=103.0, own=42.0)  # 3 CPU-seconds in 2 s, 2 of them ours
    assert others_busy(a, b) == pytest.approx(0.5)
    assert others_busy(b, b) == 0.0


class _FakeCpu:
    """CPU samples from a script: each sample, other processes used ``others`` CPUs since the last one."""

    def __init__(self):
        self.wall, self.busy, self.own = 1.0, 0.0, 0.0
        self.others = 0.0
        self.mine = 2.0

    def __call__(self) -> CpuSample:
        sample = CpuSample(self.wall, self.busy, self.own)
        self.wall += 0.5
        self.busy += 0.5 * (self.others + self.mine)
        self.own += 0.5 * self.mine
        return sample


def _governor(cpu: _FakeCpu, calls: list[int]) -> ThreadGovernor:
    # interval 0 and fake wall times far in the past: every tick takes a sample, whatever the real clock says
    gov = ThreadGovernor(2, interval_s=0.0, first_s=0.0, sampler=cpu, set_threads=calls.append)
    gov.cpus, gov.threads, gov.initial = 2, 2, 2
    return gov


def test_governor_drops_and_recovers():
    cpu, calls = _FakeCpu(), []
    gov = _governor(cpu, calls)
    assert gov.tick() == 2  # alone
    cpu.others = 1.0  # another run starts
    gov.tick()
    assert gov.tick() == 1 and calls == [1]
    for _ in range(5):
        assert gov.tick() == 1  # it keeps running: no flip-flop
    cpu.others = 0.0  # it ends (the next sample still covers its last interval, then three calm ones)
    assert [gov.tick() for _ in range(5)] == [1, 1, 1, 2, 2]
    assert calls == [1, 2]
    cpu.others = 1.0
    gov.tick(), gov.tick()
    gov.restore()  # the run ends: the next one starts from the machine's count
    assert calls[-1] == 2 and gov.threads == 2


def test_governor_inactive_without_proc_stat_or_with_one_thread():
    calls: list[int] = []
    gov = ThreadGovernor(2, sampler=lambda: None, set_threads=calls.append)
    assert not gov.active and gov.tick() == gov.threads and calls == []
    gov = ThreadGovernor(1, sampler=_FakeCpu(), set_threads=calls.append)
    assert not gov.active and calls == []


class _CountingGovernor:
    def __init__(self):
        self.ticks = 0
        self.restored = 0

    def tick(self):
        self.ticks += 1
        return torch.get_num_threads()

    def restore(self):
        self.restored += 1


def test_trainer_consults_the_governor_each_step_and_eval_batch(tmp_path, tiny_spec_dict):
    from harness.data.batches import eval_batches, make_batches
    from harness.data.prepare import prepare
    from harness.model import GPT
    from harness.train import Trainer

    spec = spec_from_dict(tiny_spec_dict)  # 6 steps, evaluation every 3 on 2 batches per split
    prep = prepare(spec.data)
    torch.manual_seed(0)
    model = GPT(spec.model, vocab_size=prep.tokenizer.vocab_size, max_seq_len=spec.data.seq_len)
    evals = {s: eval_batches(prep, spec.data, split=s, batch_size=4, n_batches=2) for s in ("train", "val")}
    gov = _CountingGovernor()
    tr = Trainer(model, spec.train, make_batches(prep, spec.data, batch_size=4, seed=0), eval_sets=evals,
                 checkpoint_dir=tmp_path, device=torch.device("cpu"), governor=gov)
    tr.fit()
    n_eval_batches = sum(len(v) for v in evals.values())
    assert gov.ticks == 6 + 3 * n_eval_batches  # steps + evaluations at steps 0, 3 and 6
    assert gov.restored == 1


def test_build_governs_threads_only_when_not_pinned(tiny_spec_dict):
    from harness.job.build import build

    threads = torch.get_num_threads()
    try:
        assert build(spec_from_dict(tiny_spec_dict), None, []).trainer.governor is not None
        tiny_spec_dict["train"]["threads"] = 1
        assert build(spec_from_dict(tiny_spec_dict), None, []).trainer.governor is None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("total", "cpus", "expected"), [
    (1, 2, 1), (2, 2, 2), (3, 2, 3), (4, 2, 2), (5, 2, 2), (6, 2, 2), (9, 2, 3), (3, 4, 3), (5, 4, 5), (12, 4, 4),
])
def test_workers_for(total, cpus, expected):
    assert workers_for(total, cpus) == expected


def _sweep_spec(tiny_spec_dict: dict, **train) -> object:
    d = dict(tiny_spec_dict)
    d["sweep"] = {"sampler": "grid", "params": {"train.optimizer.lr": [1e-3, 3e-3, 1e-2]}}
    d["train"] = {**d["train"], **train}
    return spec_from_dict(d)


def test_auto_workers(tiny_spec_dict):
    tiny_spec_dict["model"] = {"d_model": 64, "n_heads": 4, "n_layers": 4, "d_ff": 256}
    tiny_spec_dict["data"]["seq_len"] = 16
    assert auto_workers(_sweep_spec(tiny_spec_dict), 3, cpus=2) == 1  # 6 steps: not worth a worker's start-up
    assert auto_workers(_sweep_spec(tiny_spec_dict, max_steps=2000), 3, cpus=2) == 1  # ~3 s a trial: still not
    assert auto_workers(_sweep_spec(tiny_spec_dict, max_steps=20000), 3, cpus=2) == 3  # ~30 s a trial: worth it
    long = _sweep_spec(tiny_spec_dict, max_steps=200000)
    assert auto_workers(long, 3, cpus=2) == 3
    assert auto_workers(long, 1, cpus=2) == 1  # one trial
    assert auto_workers(long, 3, cpus=1) == 1  # one CPU
    assert auto_workers(_sweep_spec(tiny_spec_dict, max_steps=200000, threads=2), 3, cpus=2) == 1  # threads pinned
    tiny_spec_dict["model"] = {"d_model": 1024, "n_heads": 8, "n_layers": 12, "d_ff": 4096}
    big = _sweep_spec(tiny_spec_dict, max_steps=200000, batch_size=4)
    assert auto_workers(big, 3, cpus=2) == 1  # big matmuls split well over threads: one process


def test_workers_get_pinned_threads():
    assert _threads_per_worker(1) is None  # one worker: its trials' threads follow the CPUs free
    assert _threads_per_worker(3) >= 1


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() == first


def test_torch_threads_sets_the_count_inside_the_block_only():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("the count is put back on the way out")
    assert torch.get_num_threads() == before


def test_a_pinned_thread_count_holds_while_the_run_trains_and_is_undone_after_it(tiny_spec_dict):
    """train.threads is this run's, not the process's: the next run in the process (a sweep's next trial, a notebook's
    next cell) starts from the count it had before."""
    from harness.job.build import build
    from harness.train import StepEnd

    before = torch.get_num_threads()
    pinned = before + 1
    tiny_spec_dict["train"]["threads"] = pinned
    during: list[int] = []
    built = build(spec_from_dict(tiny_spec_dict), None, [lambda e: during.append(torch.get_num_threads()) if isinstance(e, StepEnd) else None])
    try:
        built.trainer.fit()
        assert during and set(during) == {pinned}
        assert torch.get_num_threads() == before, "the run's pinned thread count leaked into the process"
    finally:
        torch.set_num_threads(before)
