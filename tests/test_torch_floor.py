"""pyproject.toml's lower bound for torch admits no torch that lacks an API the package calls.

Each entry below is a torch API that harness uses and that is younger than torch 2.0, the version torch first
introduced it in (from torch's release notes), and a pattern that finds the call in harness/'s source. The test fails
when the bound is older than an entry's version, and when an entry's pattern no longer matches (the list would rot
into a claim nobody checks). Older APIs (scaled_dot_product_attention, LayerNorm's ``bias``, ``weights_only``) are
below every entry here, so they do not move the bound.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# API, the torch version that introduced it, a regular expression that finds its use in harness/
NEWER_APIS = [
    ("torch.nn.utils.get_total_norm", (2, 6), r"torch\.nn\.utils\.get_total_norm\("),
    ("torch.nn.utils.clip_grads_with_norm_", (2, 6), r"torch\.nn\.utils\.clip_grads_with_norm_\("),
    ("torch.is_autocast_enabled(device_type)", (2, 4), r"torch\.is_autocast_enabled\(\s*\""),
    ("fused AdamW/Adam/SGD on the CPU", (2, 4), r"\{\s*\"fused\":\s*True\s*\}"),
]


def _torch_floor() -> tuple[int, ...]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    [req] = [d for d in deps if re.match(r"\s*torch\b(?![-_.\w])", d)]
    m = re.search(r">=\s*(\d+(?:\.\d+)*)", req)
    assert m, f"the torch requirement {req!r} has no lower bound"
    return tuple(int(x) for x in m.group(1).split("."))


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "harness").rglob("*.py")))


def test_the_torch_lower_bound_has_every_api_the_package_calls():
    floor = _torch_floor()
    too_new = [f"{api} (torch {'.'.join(map(str, since))})" for api, since, _ in NEWER_APIS if since > floor[: len(since)]]
    assert not too_new, f"pyproject.toml allows torch {'.'.join(map(str, floor))}, which lacks: {', '.join(too_new)}"


def test_every_listed_api_is_still_used_and_present():
    source = _source()
    unused = [api for api, _, pattern in NEWER_APIS if not re.search(pattern, source)]
    assert not unused, f"no longer called in harness/ (drop them from NEWER_APIS, maybe lower the bound): {unused}"
    assert callable(torch.nn.utils.get_total_norm) and callable(torch.nn.utils.clip_grads_with_norm_)


def test_the_installed_torch_satisfies_the_bound():
    installed = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:3])
    assert installed >= _torch_floor() and installed[0] < 3
