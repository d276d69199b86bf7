"""Validation beyond the example: a recipe that only works at the example's shape is caught, and
held-out calibration batches are not calibrated on."""
import json
import os

import torch

import tiny_models
from torchslim import validation
from torchslim.calibration import from_batches
from torchslim.inputs import Example
from torchslim.optimize import OptimizeConfig, optimize
from torchslim.workload import Workload


def _row(run, name):
    return next(r for r in run.recipes if r.name == name)


def test_traced_model_that_baked_the_batch_in_is_rejected(tmp_path):
    model, x = tiny_models.bakes_batch()
    run = optimize(Workload(model, Example((x,)), name="bakes"),
                   OptimizeConfig(recipes=("inference-mode", "torchscript-freeze"), rounds=1, out=str(tmp_path), early_reject=False), progress=False)
    traced, eager = _row(run, "torchscript-freeze"), _row(run, "inference-mode")
    # On the example batch the trace is exact; at batch 1 it returns 4 rows instead of 1.
    assert traced.fidelity["min_cosine"] > 0.9999
    assert traced.status == "rejected" and "batch 1" in traced.reason, traced.reason
    assert traced.validation["shapes"] == "example shape only"
    # The eager recipe passes every check, at batch 1 too.
    checks = {c["check"]: c for c in eager.validation["checks"]}
    assert checks["batch 1"]["result"] == "ok" and checks["batch 1"]["min_cosine"] > 0.9999
    saved = json.load(open(os.path.join(tmp_path, "results.json")))
    assert any(r["validation"] for r in saved["recipes"] if r["name"] == "torchscript-freeze")


def test_held_out_calibration_batches_are_not_calibrated_on():
    model = tiny_models.cnn()
    x = torch.randn(2, 3, 16, 16)
    batches = [torch.randn(2, 3, 16, 16) for _ in range(8)]
    wl = Workload(model, Example((x,)), calibration=from_batches(batches, Example((x,))))
    kept = list(validation.for_recipes(wl)())
    held, _ = validation._split(wl)
    assert len(kept) == 6 and len(held) == 2
    assert not any(torch.equal(h.args[0], k.args[0]) for h in held for k in kept)
    names = [c[0] for c in validation._checks(wl, wl.example)]
    assert names[:2] == ["held-out calibration batch 1/2", "held-out calibration batch 2/2"] and "batch 1" in names


def test_token_inputs_get_a_shorter_sequence_check_and_stay_in_vocabulary():
    ids = torch.randint(5, 50, (2, 16))
    ex = Example((ids, torch.ones_like(ids)))
    wl = Workload(torch.nn.Identity(), ex)
    checks = {n: i for n, _, i in validation._checks(wl, ex)}
    assert checks["sequence length 8"].args[0].shape == (2, 8)
    gen = next(i for n, i in checks.items() if n.startswith("generated"))
    assert int(gen.args[0].min()) >= 5 and int(gen.args[0].max()) < 50 and bool((gen.args[1] == 1).all())


def test_shape_rejection_is_not_retried_with_layers_in_float(tmp_path, monkeypatch):
    """Control flow on the batch size: traced or exported, the batch>1 branch is baked in; the batch-1
    check rejects it (PT2E too, however long its compile took), and the quantization fallback is not
    tried (float layers cannot fix that)."""
    import sweep_models

    from torchslim.quant import pt2e as pt2e_flow

    monkeypatch.setattr(validation, "SHAPE_CHECK_BUDGET_MS", 0.0)  # as if every compile were slow: checks run compilation off
    model, ex = sweep_models.MODELS["shape-control-flow"]()
    pt2e = () if pt2e_flow.missing() else ("pt2e-dynamic-int8",)
    run = optimize(Workload(model, Example(ex), name="flow"),
                   OptimizeConfig(recipes=("torchscript-freeze", "dynamic-int8") + pt2e, rounds=1, early_reject=False), progress=False)
    for name in pt2e:
        row = _row(run, name)
        assert row.status == "rejected" and row.validation["rejected_by"] == "shape", row.reason
        assert "force_eager" in next(c for c in row.validation["checks"] if c["check"] == "batch 1")["mode"]
        assert "not retried" in row.fallback["result"] and len(run.recipes) == 4
    traced = _row(run, "torchscript-freeze")
    assert traced.status == "rejected" and traced.reason.startswith("batch 1: min cosine"), traced.reason
    assert traced.validation["rejected_by"] == "shape"
    assert _row(run, "dynamic-int8").validation["rejected_by"] is None  # eager: follows the branch at batch 1


def test_batch_two_check_pairs_the_example_with_a_real_held_out_row():
    """At batch 1 the other-shape check adds a real held-out row, not generated tokens (generated
    token rows can hold [PAD] ids as real tokens, which no calibration saw)."""
    ids = torch.randint(1, 100, (1, 8))
    batches = [torch.randint(1, 100, (1, 8)) for _ in range(8)]
    wl = Workload(tiny_models.cnn(), Example((ids,)), calibration=from_batches(batches, Example((ids,))))
    held, _ = validation._split(wl)
    check = next(inputs for name, kind, inputs in validation._checks(wl, Example((ids,))) if name == "batch 2")
    (t,) = check.tensors()
    assert t.shape == (2, 8) and torch.equal(t[0], ids[0]) and torch.equal(t[1], held[0].tensors()[0][0])


def test_pt2e_recipe_with_a_batch_one_example_serves_batch_two():
    """torch.export specializes size-1 dimensions: PT2E exports a batch-1 example at batch 2 so the
    quantized graph is not tied to batch 1 (it was rejected at the batch-2 check before)."""
    model, x = tiny_models.cnn(), torch.randn(1, 3, 16, 16)
    batches = [torch.randn(1, 3, 16, 16) for _ in range(8)]
    wl = Workload(model, Example((x,)), name="cnn-b1", calibration=from_batches(batches, Example((x,))))
    run = optimize(wl, OptimizeConfig(recipes=("static-int8",), rounds=1, out=None, save_model=False,
                                      early_reject=False, fallback=False), progress=False)
    row = _row(run, "static-int8")
    checks = {c["check"]: c for c in row.validation["checks"]}
    assert checks["batch 2"]["result"] == "ok" and checks["batch 2"]["min_cosine"] > 0.99, row.reason
