"""A new workload type is one file plus its tests: the shared search (search/loop.drive) runs
tests/workload_toy.py's top-1-label workload end to end, with the shared skip rules, failure rows,
time budget and writer, and the surfaces (report.html, torchslim.load) find it by its task name."""
from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch
import torch.nn as nn

import torchslim
from torchslim.results import RunResult, kept_on_stop
from torchslim.search import output
from torchslim.search.config import Budget, SearchState
from torchslim.search.loop import drive
from torchslim.search.workload_type import WorkloadType
from torchslim.techniques import CONFIGS
from torchslim.techniques.base import unregister


@pytest.fixture
def toy():
    """Import (so register) the toy workload type and its technique for one test; remove both after."""
    mod = importlib.import_module("workload_toy")
    yield mod
    unregister(mod.RoundWeightsConfig)
    WorkloadType.registry.pop(mod.TASK, None)
    sys.modules.pop("workload_toy", None)
    assert "toy_round_weights" not in CONFIGS


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _run(toy, **options) -> RunResult:
    torch.manual_seed(1)
    config = toy.ToyConfig(**options)
    kind = toy.TopLabel(_classifier(), torch.randn(64, 16))
    run = RunResult(workload={"name": "toy", "task": toy.TASK}, machine={}, config={}, recipes=[])
    write = lambda r: output.write(r, config, kind.report_files)  # noqa: E731
    with kept_on_stop(run, write):
        drive(SearchState(kind.model, None, torch.device("cpu"), config, Budget.of(config), run, write=write,
                          explicit=bool(config.recipes), kind=kind, progress=False))
    return run


def test_the_shared_search_runs_a_third_workload_type(toy, tmp_path):
    run = _run(toy, out=str(tmp_path))
    rows = {r.name: r for r in run.recipes}
    assert list(rows) == ["baseline", "round8", "round1", "round0", "round4"]  # its own hook, in order
    assert rows["round8"].agreement == 1.0 and rows["round8"].labels_per_s > 0
    assert rows["round1"].status == "rejected" and "labels changed" in rows["round1"].reason
    # the failure row is search/trial.fail's, as for every workload: type, first line, notes kept
    assert rows["round0"].status == "failed" and rows["round0"].reason.startswith("ValueError: bits must be >= 1")
    assert run.chosen in ("round8", "round4") and rows[run.chosen].status == "chosen"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["workload"]["task"] == toy.TASK and saved["recipes"][1]["agreement"] == 1.0
    # the shared writer: results.json, report.html with the type's own table, and the type's file
    html = (tmp_path / "report.html").read_text()
    assert "Top-1 labels" in html and "round1" in html
    assert (tmp_path / "labels.txt").read_text().startswith("baseline")
    # torchslim.load hands the folder to the type its manifest names
    model = torchslim.load(os.path.join(tmp_path, "model"))
    assert isinstance(model, nn.Sequential)
    assert WorkloadType.find(toy.TASK) is toy.TopLabel and WorkloadType.find("no-such-task") is None


def test_the_shared_time_budget_and_explicit_recipes_apply_to_it(toy):
    run = _run(toy, time_budget=1e-9)
    rows = {r.name: r for r in run.recipes}
    assert rows["round8"].status in ("ok", "chosen")  # the first recipe is always tried
    assert all(rows[n].status == "skipped" and rows[n].reason.startswith("time budget") for n in ("round1", "round0", "round4"))
    assert isinstance(rows["round4"], type(rows["round8"]))  # skipped rows are the type's own rows
    run = _run(toy, recipes=("round1",))
    assert [r.name for r in run.recipes] == ["baseline", "round1"] and run.chosen is None


def test_a_stop_keeps_the_rows_measured_so_far(toy, tmp_path, monkeypatch):
    def stop(self, s):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy.TopLabel, "time_survivors", stop)
    with pytest.raises(KeyboardInterrupt):
        _run(toy, out=str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["interrupted"] and [r["name"] for r in saved["recipes"]][:2] == ["baseline", "round8"]
