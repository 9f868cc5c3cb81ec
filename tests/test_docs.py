"""The README's spec reference is generated from the schema; this keeps the two in sync."""

from __future__ import annotations

import re
from pathlib import Path

from harness.spec.reference import schema_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reference_matches_schema():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- schema:start -->\n(.*)\n<!-- schema:end -->", text, re.S)
    assert block, "README lost its schema markers"
    assert block.group(1) == schema_markdown(), "README spec reference is stale: paste the output of `harness schema` between the markers"


def test_readme_quick_start_names_the_main_job():
    text = README.read_text(encoding="utf-8")
    assert "harness run experiments/lr_sweep.yaml" in text
    assert "pip install torch==2.13.0" in text
    assert "python -m pytest" in text
