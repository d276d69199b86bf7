"""Per-layer sensitivity and the automatic fallback, on real models and real INT8 kernels: the
Fashion-MNIST CNN's ranking, and an MLP whose one layer is known to break under per-tensor INT8."""
import copy
import json
import platform

import pytest
import torch
import torch.nn as nn

from torchslim import SlimError
from torchslim.cli import main
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.optimize import OptimizeConfig, optimize
from torchslim.recipes import Recipe, apply
from torchslim.sensitivity import SensitivityConfig, fewest_float_layers, make_probe, measure_layers, score, sensitivity
from torchslim.techniques import AoInt8DynamicConfig, CompileConfig, Context, StaticInt8Config
from torchslim.workload import Workload

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 kernels")
CPU = torch.device("cpu")


class Outlier(nn.Module):
    """fc1's output channel 0 is ~1000x the others, and fc2 ignores it (zero weights): in float it
    does no harm, but one uint8 scale for fc2's whole input rounds every other channel to ~0."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 16)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2, self.fc3):
                fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) / fc.in_features ** 0.5)
                fc.bias.zero_()
            self.fc1.bias[0] = 1000.0
            self.fc2.weight[:, 0] = 0.0

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def outlier_workload() -> Workload:
    g = torch.Generator().manual_seed(1)
    calib = [Example((torch.randn(8, 16, generator=g),)) for _ in range(4)]
    return Workload(model=Outlier().eval(), example=Example((torch.randn(8, 16, generator=g),)), name="outlier",
                    calibration=lambda: calib)


@pytest.fixture(scope="module")
def fashion():
    fm = pytest.importorskip("torchslim.examples.fashion_mnist")
    try:
        return fm.workload(64)
    except SlimError as e:
        pytest.skip(str(e))


def test_fashion_cnn_ranking_and_the_probe_matches_the_converted_model(fashion):
    calib = fashion.calibration()
    ctx = Context(device=CPU, example=fashion.example, calibration=lambda: calib)
    probe = make_probe(fashion.model, StaticInt8Config(), ctx)  # prepared and calibrated once
    batches = [fashion.example] + calib[:3]
    with torch.no_grad():
        refs = [b(fashion.model) for b in batches]
    rows = measure_layers(probe, batches, refs)
    print("\n" + "\n".join(f"{r['rank']}. {r['name']:13s} {r['kind']:7s} SQNR {r['sqnr_db']:.1f} dB" for r in rows))
    assert sorted(r["name"] for r in rows) == ["classifier.1", "classifier.4", "features.0.0", "features.1.0",
                                               "features.3.0", "features.4.0"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]
    sqnrs = [r["sqnr_db"] for r in rows]
    assert sqnrs == sorted(sqnrs) and sqnrs[0] > 30  # every layer alone keeps > 30 dB on this CNN
    # All layers at once: the noise of each adds up, so worse than any one alone, and still close.
    everything = score(probe.model(probe.layers), batches, refs)
    assert 30 < everything["sqnr_db"] < sqnrs[0]

    # With every switch on, the probe is exactly convert_pt2e's reference graph of the real recipe,
    # which the compiled oneDNN INT8 model matches closely.
    real = apply(copy.deepcopy(fashion.model), Recipe((StaticInt8Config(),)), ctx)
    x = fashion.example.args[0]
    with torch.no_grad():
        simulated = probe.model(probe.layers)(x)
        assert compare(real.inner(x), simulated).max_abs_err < 1e-4
        from torchslim.device import seven_bit_int8

        # 7-bit activations (no VNNI) widen the kernels' rounding differences: 47.1 dB on an AVX2-only EPYC
        assert compare(real(x), simulated).sqnr_db > (45 if seven_bit_int8() else 50)
        assert compare(fashion.model(x), probe.model([])(x)).sqnr_db > 100  # all switches off: FP32 (BN folded)


def test_the_broken_layer_ranks_first_with_both_probes():
    wl = outlier_workload()
    with torch.no_grad():
        refs = [b(wl.model).argmax(1) for b in wl.calibration()]

    def agreement(m):  # top-1 agreement with FP32, in percent: a task metric for this model
        with torch.no_grad():
            same = [(b(m).argmax(1) == r).float().mean() for b, r in zip(wl.calibration(), refs)]
        return {"agreement": 100 * float(sum(same)) / len(same)}

    wl.evaluate, wl.metric = agreement, "agreement"
    for technique, metric in ((StaticInt8Config(), True), (AoInt8DynamicConfig(), False)):
        res = sensitivity(wl, SensitivityConfig(technique=technique, metric=metric), progress=False)
        rows = {r["name"]: r for r in res["layers"]}
        print(technique.label(), {k: round(r["sqnr_db"], 1) for k, r in rows.items()})
        assert res["layers"][0]["name"] == "fc2" and rows["fc2"]["sqnr_db"] < 10
        assert all(r["sqnr_db"] > 25 for k, r in rows.items() if k != "fc2") and set(rows) == {"fc1", "fc2", "fc3"}
        if res["metric"]:  # fc2 alone breaks the task too; the others do not
            assert rows["fc2"]["metric_drop"] > 20 and all(rows[k]["metric_drop"] < 5 for k in ("fc1", "fc3"))


def test_fewest_float_layers_bisects_to_the_one_that_matters():
    wl = outlier_workload()
    probe = make_probe(wl.model, StaticInt8Config(), Context(device=CPU, example=wl.example, calibration=wl.calibration))
    with torch.no_grad():
        ref = wl.example(wl.model)

    def passes(m):
        cos = compare(ref, wl.example(m)).min_cosine
        return cos >= 0.99, {"min_cosine": cos}

    keep, trials = fewest_float_layers(probe, ["fc2", "fc1", "fc3"], passes, max_layers=3)
    assert keep == ["fc2"] and [t["float_layers"] for t in trials] == [["fc2", "fc1", "fc3"], ["fc2"]]
    keep, trials = fewest_float_layers(probe, ["fc1", "fc3", "fc2"], passes, max_layers=2)
    assert keep is None and len(trials) == 1  # the culprit is outside the allowed prefix: one trial, then stop


def test_optimize_falls_back_to_keeping_the_sensitive_layer_in_float(tmp_path):
    wl = outlier_workload()
    cfg = OptimizeConfig(recipes=("static-int8",), rounds=1, target_round_ms=5.0, out=str(tmp_path), save_model=False,
                         early_reject=False)  # compiled INT8 on this tiny MLP is slower: the early check would reject it first
    run = optimize(wl, cfg, progress=False)
    rows = {r.name: r for r in run.recipes}
    assert rows["static-int8"].status == "rejected" and "min cosine" in rows["static-int8"].reason
    retry = rows["static-int8-skip"]
    print(retry.reason, retry.fidelity["min_cosine"], retry.fallback["seconds"])
    assert retry.status in ("ok", "chosen", "rejected") and retry.fidelity["min_cosine"] >= 0.99
    assert list(retry.steps[0]["skip"]) == ["fc2"]
    fb = retry.fallback
    assert [k["name"] for k in fb["kept_in_float"]] == ["fc2"] and fb["kept_in_float"][0]["rank"] == 1
    assert fb["from"] == "static-int8" and "min cosine" in fb["why"] and len(fb["attempts"]) == 1
    assert retry.status != "rejected" or "slower" in retry.reason  # only a timing verdict may reject it
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["recipes"][-1]["fallback"]["kept_in_float"][0]["name"] == "fc2"
    html = (tmp_path / "report.html").read_text()
    assert "Sensitivity and fallback" in html and "Real attempts" in html
    # No fallback when it is turned off, or for a recipe without a quantization step.
    off = optimize(wl, OptimizeConfig(recipes=("static-int8",), rounds=1, target_round_ms=5.0, fallback=False), progress=False)
    assert [r.name for r in off.recipes] == ["baseline", "static-int8"]


def test_sensitivity_cli_and_bad_input(tmp_path, capsys):
    calib = tmp_path / "calib.pt"
    torch.save(torch.randn(16, 3, 16, 16), calib)
    args = ["sensitivity", "--model", "tiny_models:cnn", "--input-shape", "4x3x16x16", "--no-progress"]
    assert main(args + ["--calib-data", str(calib), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "SQNR dB (alone)" in out and "features.0" in out
    saved = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert len(saved["layers"]) == 4 and saved["metric"] is None
    assert "Layer sensitivity" in (tmp_path / "s" / "sensitivity.html").read_text()

    def error(extra):
        assert main(args + extra + ["--out", str(tmp_path / "bad")]) == 2
        return capsys.readouterr().err

    assert "needs calibration data" in error([])
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(16, 3, 8), wrong)
    assert "calibration input 0 is (4, 3, 8):float32" in error(["--calib-data", str(wrong)])
    empty = tmp_path / "empty.pt"
    torch.save(torch.randn(0, 3, 16, 16), empty)
    assert "is empty" in error(["--calib-data", str(empty)])
    assert "cannot be measured per layer" in error(["--calib-data", str(calib), "--technique", "compile"])
    relu = tmp_path / "relu_only.py"
    relu.write_text("import torch.nn as nn\ndef build():\n    return nn.Sequential(nn.ReLU())\n")
    assert main(["sensitivity", "--model", f"{relu}:build", "--input-shape", "4x3x16x16", "--calib-data", str(calib),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "no Linear/Conv layers to quantize" in capsys.readouterr().err
    with pytest.raises(SlimError, match="no skip option"):
        SensitivityConfig(technique=CompileConfig())

