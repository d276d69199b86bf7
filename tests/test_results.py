"""Typed results: Status, Timing and Fidelity on RecipeResult, and the results.json round trip."""
import json
import math

import torch
import torch.nn as nn

from torchslim.inputs import Example
from torchslim.workload import Workload
from torchslim.fidelity import Fidelity
from torchslim.measure import Timing
from torchslim.optimize import OptimizeConfig, optimize
from torchslim.results import STATUSES, RecipeResult, RunResult, Status

# A results.json row as the previous version's optimize wrote it: timing and fidelity as plain
# dicts (throughput_per_s derived, SQNR of identical outputs as null), no `early`/`cached` keys.
OLD_RUN = {
    "workload": {"name": "tiny", "spec": None, "example": "(4, 8):float32", "metric": None},
    "machine": {"device": "cpu", "torch": "2.5.0"},
    "config": {"objective": "latency", "min_cosine": 0.99},
    "recipes": [
        {"name": "baseline", "steps": [], "status": "baseline", "reason": "FP32 eager under torch.no_grad()", "notes": [],
         "prepare_s": None, "first_call_ms": 1.5,
         "timing": {"n": 40, "median_ms": 0.5, "p90_ms": 0.6, "mean_ms": 0.52, "stdev_ms": 0.04, "iqr_ms": 0.05,
                    "ci95_ms": [0.49, 0.51], "first_call_ms": 1.5, "batch_size": 4, "throughput_per_s": 8000.0},
         "speedup": 1.0, "size_bytes": 1234, "peak_memory_bytes": 0,
         "fidelity": {"sqnr_db": None, "cosine": 1.0, "min_cosine": 1.0, "max_abs_err": 0.0, "top1_agreement": 1.0,
                      "finite": True},
         "metrics": None, "metric_drop": None},
        {"name": "compile", "steps": [{"technique": "compile"}], "status": "ok", "reason": "", "notes": [],
         "timing": {"n": 40, "median_ms": 0.25, "p90_ms": 0.3, "mean_ms": 0.26, "stdev_ms": 0.02, "iqr_ms": 0.03,
                    "ci95_ms": [0.24, 0.26], "first_call_ms": 900.0, "batch_size": 4, "throughput_per_s": 16000.0},
         "speedup": 2.0, "fidelity": {"sqnr_db": 80.5, "cosine": 1.0, "min_cosine": 0.99999, "max_abs_err": 1e-5,
                                      "top1_agreement": None, "finite": True},
         "a_key_from_the_future": {"x": 1}},
        {"name": "bf16", "steps": [{"technique": "low_precision"}], "status": "rejected",
         "reason": "outputs contain NaN or Inf", "timing": None,
         "fidelity": {"sqnr_db": 0.0, "cosine": 0.5, "min_cosine": 0.1, "max_abs_err": None, "top1_agreement": None,
                      "finite": False}},
        {"name": "fp16", "steps": [], "status": "skipped", "reason": "no FP16"},
    ],
    "chosen": None, "artifact": None, "created": "2025-01-01T00:00:00+00:00", "error": None,
    "snippet": "",
}


def test_status_is_a_string():
    assert Status.OK == "ok" and f"{Status.REJECTED}" == "rejected" and str(Status.CHOSEN) == "chosen"
    assert json.dumps({"s": Status.SKIPPED}) == '{"s": "skipped"}'
    assert set(STATUSES) == {"chosen", "ok", "rejected", "failed", "skipped", "baseline", "inconclusive", "interrupted"}
    r = RecipeResult("x", [])
    r.status = "failed"  # code that assigns the plain string still gets the enum
    assert r.status is Status.FAILED and r.to_dict()["status"] == "failed" and type(r.to_dict()["status"]) is str


def test_old_format_loads():
    run = RunResult.from_dict(json.loads(json.dumps(OLD_RUN)))
    base, comp, bf16, fp16 = run.recipes
    assert base.status is Status.BASELINE and isinstance(base.timing, Timing) and base.timing.median_ms == 0.5
    assert base.timing.ci95_ms == (0.49, 0.51) and base.timing.throughput_per_s == 8000.0
    assert isinstance(base.fidelity, Fidelity) and base.fidelity.sqnr_db == math.inf
    assert comp.timing.median_ms == 0.25 and comp.early is None and comp.cached is None
    assert bf16.timing is None and bf16.fidelity.max_abs_err == math.inf and not bf16.fidelity.finite
    assert fp16.status == "skipped" and fp16.timing is None and fp16.fidelity is None
    assert run.baseline is base and run.chosen is None
    d = run.to_dict()  # written back: the old keys as they were, new fields at their defaults
    for old, new in zip(OLD_RUN["recipes"], d["recipes"]):
        for k, v in old.items():
            if k == "fidelity" and v:
                v = {**v, "exact_match": None}
            assert new[k] == v, (old["name"], k, new[k], v)
    assert d["snippet"] == "" and d["recipes"][1]["a_key_from_the_future"] == {"x": 1}


def test_real_run_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    wl = Workload(model=model, example=Example((torch.randn(4, 16),)), name="tiny-mlp")
    config = OptimizeConfig(recipes=("inference-mode", "dynamic-int8"), rounds=2, target_round_ms=2.0,
                            out=str(tmp_path), save_model=False, cache=False)
    run = optimize(wl, config, progress=False)
    assert all(isinstance(r.status, Status) for r in run.recipes)
    assert isinstance(run.baseline.timing, Timing) and isinstance(run.baseline.fidelity, Fidelity)
    d = run.to_dict()
    assert RunResult.from_dict(d).to_dict() == d
    with open(tmp_path / "results.json", encoding="utf-8") as f:
        on_disk = json.load(f)
    again = RunResult.from_dict(on_disk).to_dict()
    assert json.dumps(again, sort_keys=True) == json.dumps(on_disk, sort_keys=True)
    assert on_disk["recipes"][0]["timing"]["throughput_per_s"] > 0 and on_disk["recipes"][0]["fidelity"]["sqnr_db"] is None
