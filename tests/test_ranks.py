"""The loop's two kinds of processes (harness.train.distributed.Ranks): a run alone (OneProcess) and a DDP rank
(Distributed) answer the loop's questions alike. Here the DDP side is a real gloo process group of one rank, so every
collective runs for real; tests/test_ddp.py runs two ranks under torchrun."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.data.prepare import PAD_TARGET
from harness.train.distributed import Distributed, OneProcess, Ranks

CPU = torch.device("cpu")


def _members(cls: type) -> set[str]:
    """Public attributes, a dataclass's fields included (a field without a default is no class attribute)."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {n for n in dir(cls) if not n.startswith("_")} | fields


@pytest.fixture
def group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield Distributed(rank=0, world_size=1, local_rank=0)
    finally:
        dist.destroy_process_group()


def test_both_kinds_have_every_member_the_loop_calls():
    wanted = _members(Ranks)
    assert wanted >= {"is_main", "world_size", "wrap", "shard", "loss", "any", "broadcast", "agree_on_eval"}
    for cls in (OneProcess, Distributed):
        assert wanted <= _members(cls), f"{cls.__name__} lacks {sorted(wanted - _members(cls))}"


def test_one_process_and_a_one_rank_group_give_the_same_answers(group):
    one = OneProcess()
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    y = torch.randint(0, 7, (3, 5))
    y[0, :3] = PAD_TARGET  # ungraded positions count in neither
    (a, a_value), (b, b_value) = one.loss(logits, y), group.loss(logits, y)
    assert b_value == pytest.approx(a_value, rel=1e-6) and torch.allclose(a, b)
    (ga,) = torch.autograd.grad(a, logits)
    (gb,) = torch.autograd.grad(b, logits)
    assert torch.allclose(ga, gb)

    x = torch.arange(12).view(3, 4)
    for ranks in (one, group):
        assert ranks.is_main and ranks.world_size == 1
        sx, sy = ranks.shard(x, y)
        assert torch.equal(sx, x) and torch.equal(sy, y)
        assert ranks.any(True, CPU) and not ranks.any(False, CPU)
        assert ranks.broadcast({"state": [1, 2]}) == {"state": [1, 2]}

    model = torch.nn.Linear(4, 2)
    assert one.wrap(model, CPU) is model
    assert group.wrap(model, CPU).module is model  # DistributedDataParallel around the same weights
    metrics = {"val/loss": 1.25}
    assert one.agree_on_eval(metrics, model, CPU) == metrics
    assert group.agree_on_eval(metrics, model, CPU) == {**metrics, "ddp/param_divergence": 0.0}
