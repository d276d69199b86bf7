"""Calibration drift on the real Fashion-MNIST CNN: a contrast shift (x1.5, pixels not clipped, as a
camera with more gain) is caught by the monitor at the layer it saturates, and recalibrating on
shifted images, without training, brings the INT8 model back to the FP32 model's outputs."""
import copy
import json
import os
import platform

import pytest
import torch
import torch.nn as nn

from torchslim import SlimError, artifacts
from torchslim.cli import main
from torchslim.drift import DriftMonitor, converted_graph, recalibrate
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply
from torchslim.techniques import CompileConfig, Context, InferenceModeConfig, StaticInt8Config, StaticInt8FxConfig

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 kernels")

fm = pytest.importorskip("torchslim.examples.fashion_mnist")
BATCH = 64
CONTRAST = 1.5


def shifted(x: torch.Tensor) -> torch.Tensor:
    """Contrast x1.5 in pixel space, renormalized with the training statistics (not clipped)."""
    return ((x * fm.STD + fm.MEAN) * CONTRAST - fm.MEAN) / fm.STD


def batches(x: torch.Tensor) -> list[Example]:
    return [Example((c,)) for c, _ in fm._batches(x, BATCH)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A static INT8 artifact of the CNN calibrated on training images, and held-out data."""
    try:
        wl = fm.workload(BATCH)
    except SlimError as e:
        pytest.skip(str(e))
    x_train, _ = fm.load_split(train=True)
    x_test, y_test = fm.load_split(train=False)
    calib = wl.calibration()
    recipe = Recipe((StaticInt8Config(), InferenceModeConfig()))
    ctx = Context(device=torch.device("cpu"), example=wl.example, calibration=lambda: calib)
    int8 = apply(copy.deepcopy(wl.model), recipe, ctx)
    with torch.no_grad():
        ref = wl.example(int8)
    folder = str(tmp_path_factory.mktemp("drift") / "model")
    artifacts.save(folder, wl.model, recipe, wl.example, spec=wl.spec, source=wl.source, reference_output=ref,
                   calibration=calib)
    return {"wl": wl, "int8": int8, "folder": folder, "calib": calib, "x_new": shifted(x_train[1024:1280]),
            "x_test": x_test[:2048], "y_test": y_test[:2048]}


@pytest.fixture(scope="module")
def monitor(setup):
    """The monitor as served: compiled observing graph (compiled here, by the baseline run)."""
    return DriftMonitor(setup["int8"], every=4, baseline=setup["calib"])


def test_monitor_flags_the_saturated_layer_only_under_the_shift(setup, monitor):
    x = setup["x_test"][:256]
    same = {r["layer"]: r for r in monitor.observe(batches(x))}
    assert monitor.drifted() == []
    monitor.observe(batches(shifted(x)))
    moved = {r["layer"]: r for r in monitor.report()}
    print({k: (round(same[k]["saturated"], 5), round(r["saturated"], 5), round(r["range_moved"], 3)) for k, r in moved.items()})
    # The input quantizer ([-0.81, 2.02] from calibration) clamps every pixel brighter than 2/3.
    assert monitor.drifted() == ["features.0.0"]
    first = moved["features.0.0"]
    assert first["saturated"] > 0.15 and same["features.0.0"]["saturated"] < 1e-4
    assert first["range_moved"] > 0.4 and first["baseline"]["range"][1] == pytest.approx(2.0227, abs=1e-3)
    assert all(r["saturated"] < 1e-3 for k, r in moved.items() if k != "features.0.0")


def test_monitor_observes_one_call_in_every_and_answers_like_the_model(setup, monitor):
    int8 = setup["int8"]
    x = setup["x_test"][:BATCH]
    monitor.reset()
    monitor.calls = 0
    with torch.no_grad():
        fast = int8(x)
        outs = [monitor(x) for _ in range(8)]
    assert monitor.report()[0]["calls"] == 2  # calls 4 and 8
    assert all(compare(fast, o).min_cosine > 0.9999 for o in outs)  # observed calls: same graph, same scales
    assert converted_graph(int8) is int8.inner.inner
    # Uncompiled, the observing graph gives the same statistics.
    eager = DriftMonitor(int8, every=1, compile=False)
    a, b = eager.observe([Example((x,))]), monitor.observe([Example((x,))])
    assert [r["saturated"] for r in a] == pytest.approx([r["saturated"] for r in b], abs=1e-6)
    assert [v for r in a for v in r["range"]] == pytest.approx([v for r in b for v in r["range"]], rel=1e-4, abs=1e-4)  # compiled vs eager reduction order


def test_monitor_refuses_a_model_without_calibrated_ranges():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    with pytest.raises(SlimError, match="no calibrated activation quantizers"):
        DriftMonitor(model)
    compiled = apply(model, Recipe((CompileConfig(),)), Context(device=torch.device("cpu"), example=Example((torch.randn(2, 4),))))
    with pytest.raises(SlimError, match="static INT8"):
        DriftMonitor(compiled)
    # static-int8-ts requantizes inside its fused ops: refused, with the recipe that can be watched.
    ex = Example((torch.randn(2, 4),))
    ts = apply(model, Recipe((StaticInt8FxConfig(),)), Context(device=torch.device("cpu"), example=ex, calibration=lambda: [ex]))
    with pytest.raises(SlimError, match="TorchScript model") as e:
        DriftMonitor(ts)
    assert "--recipes static-int8" in e.value.fix
    sr = apply(model, Recipe((StaticInt8FxConfig(engine="x86", static_runtime=True),)),
               Context(device=torch.device("cpu"), example=ex, calibration=lambda: [ex]))
    with pytest.raises(SlimError, match="TorchScript model"):
        DriftMonitor(sr)


def test_recalibrate_cli_recovers_the_shifted_accuracy(setup, tmp_path, capsys):
    data = tmp_path / "new.pt"
    torch.save(setup["x_new"], data)
    evalfile = tmp_path / "shifted_eval.py"
    evalfile.write_text(
        "from torchslim.examples import fashion_mnist as fm\n"
        "x, y = fm.load_split(train=False)\n"
        f"x, y = ((x[:2048] * fm.STD + fm.MEAN) * {CONTRAST} - fm.MEAN) / fm.STD, y[:2048]\n"
        "def accuracy(model):\n"
        f"    return fm.accuracy(model, x, y, {BATCH})\n")
    out = tmp_path / "recal"
    assert main(["recalibrate", setup["folder"], "--data", str(data), "--eval", f"{evalfile}:accuracy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "recalibration.json").read_text())
    before, after, fp32 = rep["before"], rep["after"], rep["fp32_metric"]
    print(f"\nshifted test set: FP32 {fp32:.2f}, INT8 calibrated on original data {before['metric']:.2f}, "
          f"after recalibration {after['metric']:.2f}; SQNR vs FP32 {before['sqnr_db']:.1f} -> {after['sqnr_db']:.1f} dB, "
          f"top-1 agreement {before['top1_agreement']:.4f} -> {after['top1_agreement']:.4f}, "
          f"max saturation {before['max_saturation']:.4f} -> {after['max_saturation']:.6f}")
    assert "old data" in printed and "new data" in printed
    assert rep["samples"] == 256 and rep["metric"] == "accuracy"
    # Back to the FP32 model's behaviour on the new data: the clamping is gone.
    assert before["most_saturated_layer"] == "features.0.0" and before["max_saturation"] > 0.15
    assert after["max_saturation"] < 1e-3
    assert before["sqnr_db"] < 20 and after["sqnr_db"] > 30
    assert after["top1_agreement"] > before["top1_agreement"] and after["top1_agreement"] >= 0.99
    assert abs(after["metric"] - fp32) <= 0.3 and after["metric"] > before["metric"]
    # A loadable artifact (reference outputs verified on load) with the new calibration data.
    assert sorted(os.listdir(out)) == sorted(["torchslim.json", "weights.pt", "example.pt", "reference.pt",
                                               "calibration.pt", "recalibration.json"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".recal")]  # no temporary folder left
    reloaded = artifacts.load(str(out))
    x = shifted(setup["x_test"][:BATCH])
    with torch.no_grad():
        assert compare(setup["wl"].model(x), reloaded(x)).sqnr_db > 30


def test_recalibrate_bad_input(setup, tmp_path, capsys):
    folder = setup["folder"]
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(128, 3, 28, 28), wrong)
    assert main(["recalibrate", folder, "--data", str(wrong)]) == 2
    assert "calibration input 0 is (64, 3, 28, 28):float32, the example is (64, 1, 28, 28):float32" in capsys.readouterr().err
    typed = tmp_path / "typed.pt"
    torch.save(torch.zeros(128, 1, 28, 28, dtype=torch.int64), typed)
    assert main(["recalibrate", folder, "--data", str(typed)]) == 2
    assert "int64" in capsys.readouterr().err
    empty = tmp_path / "empty.pt"
    torch.save(torch.zeros(0, 1, 28, 28), empty)
    assert main(["recalibrate", folder, "--data", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    with pytest.raises(SlimError, match="empty"):
        recalibrate(folder, [])
    assert main(["recalibrate", str(tmp_path / "nope"), "--data", str(wrong)]) == 2
    assert "not a torchslim model folder" in capsys.readouterr().err
    # A model without calibrated ranges has nothing to refresh.
    plain = str(tmp_path / "compiled")
    artifacts.save(plain, setup["wl"].model, Recipe((CompileConfig(),)), setup["wl"].example, spec=setup["wl"].spec)
    assert main(["recalibrate", plain, "--data", str(wrong)]) == 2
    assert "no calibrated ranges to refresh" in capsys.readouterr().err


@pytest.mark.parametrize("cfg", [StaticInt8FxConfig(), StaticInt8FxConfig(engine="x86", static_runtime=True)],
                         ids=["ts", "ts-x86-sr"])
def test_recalibrate_a_torchscript_int8_model(tmp_path, cfg):
    """static-int8-ts keeps its ranges inside fused TorchScript ops: recalibration still refreshes them
    (fidelity on the shifted data recovers) and says saturation is not observable, instead of failing."""
    import tiny_models

    model = tiny_models.cnn()
    gen = torch.Generator().manual_seed(0)
    old = [Example((torch.randn(4, 3, 16, 16, generator=gen),)) for _ in range(4)]
    new = [torch.randn(4, 3, 16, 16, generator=gen) * 3 + 1 for _ in range(4)]  # a shifted, wider input
    recipe = Recipe((cfg,))
    ctx = Context(device=torch.device("cpu"), example=old[0], calibration=lambda: old)
    slim = apply(copy.deepcopy(model), recipe, ctx)
    folder, out = str(tmp_path / "m"), str(tmp_path / "m2")
    with torch.no_grad():
        artifacts.save(folder, model, recipe, old[0], spec="tiny_models:cnn", reference_output=old[0](slim),
                       calibration=old, optimized=slim)
    report = recalibrate(folder, new, out, model=copy.deepcopy(model), progress=False)
    before, after = report["before"], report["after"]
    assert after["sqnr_db"] > before["sqnr_db"] + 3 and after["min_cosine"] > before["min_cosine"], report
    assert after["max_saturation"] is None and "TorchScript" in after["saturation_unavailable"]
    assert os.path.isfile(os.path.join(out, artifacts.TORCHSCRIPT))
    with torch.no_grad():
        assert torch.equal(Example((new[0],))(artifacts.load(out, copy.deepcopy(model))),
                           Example((new[0],))(torch.jit.load(os.path.join(out, artifacts.TORCHSCRIPT))))
