"""A technique added from one file (tests/plugin_technique.py), with no edit to torchslim: the
default search tries it, --recipes names it, and its config round-trips through results.json."""
import importlib
import json
import sys

import pytest
import torch
import torch.nn as nn

import tiny_models
from torchslim import OptimizeConfig, optimize, priors
from torchslim.inputs import Example
from torchslim.recipes import Recipe, candidates
from torchslim.techniques import CONFIGS, config_from_dict, registered
from torchslim.techniques.base import unregister
from torchslim.workload import Workload

CPU = torch.device("cpu")


@pytest.fixture
def plugin():
    """Import (so register) the plugin for one test; remove it after, so no other test sees it."""
    mod = importlib.import_module("plugin_technique")
    yield mod
    unregister(mod.ContiguousWeightsConfig)
    sys.modules.pop("plugin_technique", None)
    assert "contiguous_weights" not in CONFIGS


def _strided_mlp() -> nn.Module:
    """tiny_models.mlp with its first weight stored transposed (as a checkpoint might hold it)."""
    model = tiny_models.mlp()
    lin = model.net[0]
    lin.weight = nn.Parameter(lin.weight.detach().t().contiguous().t())
    assert not lin.weight.is_contiguous()
    return model


def _workload() -> Workload:
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    return Workload(model=_strided_mlp(), example=Example((x,)), name="strided-mlp")


def test_the_default_search_tries_a_plugin_technique(plugin, tmp_path, monkeypatch):
    assert plugin.ContiguousWeightsConfig in registered()
    assert "contiguous-weights" in [r.name for r in candidates(CPU)]
    # Priors know nothing of the plugin: rank it first, so a budget that cuts every later recipe keeps the test short.
    monkeypatch.setattr(priors, "patterns", lambda kind, tier: ["contiguous-weights"])
    config = OptimizeConfig(recipes=None, rounds=3, target_round_ms=10, time_budget=1e-6, early_reject=False,
                            fallback=False, out=str(tmp_path))
    run = optimize(_workload(), config, progress=False)
    assert run.search["order"][0] == "contiguous-weights" and len(run.search["order"]) > 1
    row = next(r for r in run.recipes if r.name == "contiguous-weights")
    assert row.status in ("ok", "chosen", "rejected", "inconclusive"), row.reason
    assert row.timing.median_ms > 0 and row.speedup > 0 and row.fidelity.min_cosine > 0.9999
    assert "made 1 tensor(s) contiguous: net.0.weight" in row.notes
    assert all(r.status == "skipped" for r in run.recipes[2:])  # the rest: cut by the time budget
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in on_disk["recipes"] if r["name"] == "contiguous-weights"] == [row.status]


def test_recipes_names_a_plugin_technique(plugin, tmp_path, monkeypatch):
    from torchslim.cli import main

    monkeypatch.setattr(tiny_models, "strided_mlp", _strided_mlp, raising=False)
    out = tmp_path / "run"
    assert main(["optimize", "--model", "tiny_models:strided_mlp", "--input-shape", "8x64", "--recipes", "contiguous-weights",
                 "--rounds", "2", "--no-progress", "--fresh", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["recipes"]
    assert [r["name"] for r in rows] == ["baseline", "contiguous-weights"]
    assert rows[1]["steps"][0] == {"technique": "contiguous_weights", "buffers": True}
    assert rows[1]["status"] != "skipped" and (rows[1]["timing"] or rows[1]["early"])  # measured (early check or final timing)


def test_a_plugin_config_round_trips_through_json(plugin):
    cfg = plugin.ContiguousWeightsConfig(buffers=False)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    recipe = next(r for r in candidates(CPU) if r.name == "contiguous-weights")
    assert Recipe.from_list(json.loads(json.dumps(recipe.to_list()))) == recipe
    assert [s.name for s in recipe.steps] == ["contiguous_weights", "inference_mode"]
