"""Architecture sweep (issue 16, item 6): `optimize` completes on every architecture of
tests/sweep_models.py with a short, cheap recipe list; every row is a result (no crash), and a
chosen recipe is faster than the baseline or the run says that nothing was chosen and why per row."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import sweep_models  # noqa: E402
from torchslim.report import format_table  # noqa: E402
from torchslim.results import STATUSES  # noqa: E402

RECIPES = ("inference-mode", "torchscript-freeze", "dynamic-int8")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(sweep_models.MODELS))
def test_optimize_completes_and_every_row_is_a_result(name, tmp_path):
    pytest.importorskip("transformers")
    from sweep import run_one

    r = run_one(name, RECIPES, rounds=2, threads=2, out=str(tmp_path))
    run = r["run"]
    assert run.error is None
    assert [x.name for x in run.recipes] == ["baseline", *RECIPES]
    for row in run.recipes:
        assert row.status in STATUSES
        if row.status in ("failed", "rejected", "skipped"):
            assert row.reason, row
        if row.status in ("ok", "chosen"):
            assert row.timing and row.fidelity["min_cosine"] >= 0.99 and row.validation, row
    if run.chosen:
        assert r["speedup"] > 1.0
    else:
        assert "none" in format_table(run.to_dict()).lower()
