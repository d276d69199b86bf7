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


def test_pt2e_leaves_integer_arithmetic_unobserved():
    """RoBERTa builds position ids as cumsum(mask) * mask: the X86 quantizer annotated that integer
    mul and PT2E failed; now only the float Linear gets observers, and the prepared model runs."""
    import torch

    from torchslim.quant import pt2e

    if pt2e.missing():
        pytest.skip(pt2e.missing())

    class PositionIds(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Embedding(40, 16)
            self.lin = torch.nn.Linear(16, 16)

        def forward(self, mask):
            ids = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long()
            return self.lin(self.pos(ids))

    mask = torch.ones(2, 8, dtype=torch.int32)
    gm = torch.export.export(PositionIds().eval(), (mask,)).module()
    prepared = pt2e.prepare(gm, pt2e.x86_quantizer(is_dynamic=True))
    with torch.no_grad():
        assert prepared(mask).shape == (2, 8, 16)
    observed = [n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in n.target]
    assert observed and all(n.args[0].meta["val"].is_floating_point() for n in observed if "val" in n.args[0].meta)
