"""Failure rows the exhaustive sweep over tests/sweep_models.py found (issue 27, item 4), fixed."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import sweep_models  # noqa: E402
import torchslim  # noqa: E402
import torchslim.recipes  # noqa: E402
from torchslim.recipes import by_name  # noqa: E402


@pytest.mark.slow
def test_static_int8_aoti_of_a_gru_compiles_static_where_dynamic_fails():
    """torchao's x86 INT8 Inductor pass raised "torch.Size() takes an iterable of 'int'" on the
    GRU tagger's PT2E graph with a dynamic batch (torchao 0.18): the package is compiled static and
    the note says why, instead of a failure row."""
    from sweep import calibration_like

    if not any(r.name == "static-int8+aoti" for r in torchslim.recipes.candidates(torch.device("cpu"))):
        pytest.skip("static-int8+aoti is not a candidate here")
    model, ex = sweep_models.MODELS["gru-tagger"]()
    calib = [e.args for e in calibration_like(ex)()]
    recipe = by_name(["static-int8+aoti"], torch.device("cpu"))[0]
    out = torchslim.apply(model, recipe, ex, calibration=calib)
    assert out.meta["serves"].startswith("serves"), out.meta
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(out(*ex).flatten(), model(*ex).flatten(), dim=0)
    assert cos > 0.99
