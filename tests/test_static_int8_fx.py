"""Static INT8 on PyTorch's eager quantized kernels, TorchScript-frozen (torch.ao FX graph mode):
the real Fashion-MNIST CNN keeps its accuracy, the frozen graph runs quantized kernels end to end,
layers can be kept in float, the artifact reloads to identical outputs, and every refusal says why."""
import copy
import json
import platform

import pytest
import torch
import torch.nn as nn

import tiny_models
from test_static_int8 import DataDependent, ResCat, batches, ctx_for, randn
from torchslim import NotApplicable, SlimError, artifacts
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.measure import serialized_bytes
from torchslim.recipes import Recipe, apply, candidates
from torchslim.sensitivity import make_probe, with_float_layers
from torchslim.techniques import Context
from torchslim.techniques.base import config_from_dict, handler
from torchslim.techniques.static_int8 import NO_CALIBRATION, StaticInt8Config
from torchslim.techniques.static_int8_fx import StaticInt8FxConfig

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 kernels")

CFG = StaticInt8FxConfig()
SR = StaticInt8FxConfig(engine="x86", static_runtime=True)  # fbgemm Linears on Static Runtime


def ops(scripted: torch.jit.ScriptModule) -> list[str]:
    return [n.kind() for n in scripted.graph.nodes() if n.kind().startswith(("aten::", "quantized::"))]


def test_tiny_cnn_runs_quantized_kernels_end_to_end():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    with torch.no_grad():
        ref = example(model)
    ctx = ctx_for(example, batches((4, 3, 16, 16)))
    slim = apply(copy.deepcopy(model), Recipe((CFG,)), ctx)
    assert isinstance(slim, torch.jit.ScriptModule)
    kinds = ops(slim)
    # One quantize at the input, one dequantize at the output, int8 kernels between: no q/dq pair
    # around the flatten, no FP32 conv or matmul.
    assert kinds.count("aten::quantize_per_tensor") == 1 and kinds.count("aten::dequantize") == 1, kinds
    assert kinds.count("quantized::conv2d_relu") + kinds.count("quantized::conv2d") == 2, kinds
    assert kinds.count("quantized::linear_relu") + kinds.count("quantized::linear") == 2, kinds
    assert not {"aten::_convolution", "aten::conv2d", "aten::linear", "aten::addmm"} & set(kinds), kinds
    with torch.no_grad():
        out = example(slim)
    fid = compare(ref, out)
    assert out.dtype == torch.float32 and fid.finite and fid.min_cosine >= 0.99 and fid.sqnr_db > 20, fid
    d = ctx.details["static_int8_fx"]
    assert d["quantized"] == {"Conv2d": 2, "Linear": 2} and d["left_in_float"] == []
    assert d["calibration"] == {"batches": 8, "samples": 32} and d["engine"] in ("onednn", "x86", "fbgemm")
    assert any(n.startswith("quantized 2/2 Conv2d, 2/2 Linear") and "legacy upstream" in n for n in ctx.notes), ctx.notes
    assert serialized_bytes(slim) < 0.5 * serialized_bytes(model)
    other = randn(7, 3, 16, 16, seed=5)  # another batch size through the traced graph
    with torch.no_grad():
        assert compare(model(other), slim(other)).min_cosine >= 0.99


def test_residual_concat_pooling_model():
    model = ResCat().eval()
    example = Example((randn(2, 3, 16, 16),))
    with torch.no_grad():
        ref = example(model)
    ctx = ctx_for(example, batches((2, 3, 16, 16), n=16))
    slim = handler(CFG).apply(copy.deepcopy(model), CFG, ctx)
    with torch.no_grad():
        fid = compare(ref, example(slim))
    assert fid.finite and fid.min_cosine >= 0.99 and fid.sqnr_db > 20, fid
    assert ctx.details["static_int8_fx"]["quantized"] == {"Conv2d": 5, "Linear": 1}
    assert "quantized::add_relu" in ops(slim) or "quantized::add" in ops(slim)


def test_fashion_mnist_cnn_keeps_its_accuracy():
    from torchslim.examples import fashion_mnist as fm

    try:
        wl = fm.workload(64)
    except SlimError as e:
        pytest.skip(str(e))
    ctx = Context(device=torch.device("cpu"), example=wl.example, calibration=wl.calibration)
    slim = apply(copy.deepcopy(wl.model), Recipe((CFG,)), ctx)
    base, quant = wl.evaluate(wl.model)["accuracy"], wl.evaluate(slim)["accuracy"]
    assert base - quant <= 0.3, (base, quant)  # the bound for static INT8 on this CNN
    with torch.no_grad():
        assert compare(wl.example(wl.model), wl.example(slim)).min_cosine >= 0.999


def test_skip_keeps_matching_modules_in_float():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    ctx = ctx_for(example, batches((4, 3, 16, 16), n=2))
    cfg = StaticInt8FxConfig(skip=("head.*",))
    slim = handler(cfg).apply(copy.deepcopy(model), cfg, ctx)
    d = ctx.details["static_int8_fx"]
    assert d["quantized"] == {"Conv2d": 2} and d["skipped_by_config"] == ["head.0", "head.1", "head.2", "head.3"]
    assert "left in float: head.1 (Linear), head.3 (Linear)" in ctx.notes[0]
    assert "aten::linear" in ops(slim)
    with torch.no_grad():
        assert compare(example(model), example(slim)).min_cosine >= 0.99
    with pytest.raises(SlimError, match="matches no module"):
        handler(cfg).apply(copy.deepcopy(model), StaticInt8FxConfig(skip=("nope.*",)), ctx)


def test_refusals():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    h = handler(CFG)
    assert h.applies(model, CFG, ctx_for(example)) == NO_CALIBRATION
    assert "CPUs only" in h.applies(model, CFG, Context(device=torch.device("cuda"), example=example, calibration=list))
    assert "TorchScript" in h.applies(torch.jit.script(model), CFG, ctx_for(example, []))
    assert "no Linear/Conv" in h.applies(nn.Sequential(nn.ReLU()), CFG, ctx_for(example, []))
    kw = Example((), {"x": randn(4, 3, 16, 16)})
    assert "keyword inputs" in h.applies(model, CFG, ctx_for(kw, []))
    with pytest.raises(SlimError, match="the calibration set is empty"):
        h.apply(copy.deepcopy(model), CFG, ctx_for(example, []))
    with pytest.raises(SlimError, match=r"rank 3"):
        h.apply(copy.deepcopy(model), CFG, ctx_for(example, [Example((randn(4, 3, 16),))]))
    # Python control flow on a tensor's value: symbolic tracing refuses, with the alternative named.
    dd_ex = Example((randn(2, 8),))
    with pytest.raises(NotApplicable, match="torch.fx symbolic tracing cannot capture this model") as e:
        h.apply(DataDependent().eval(), CFG, ctx_for(dd_ex, [dd_ex]))
    assert "static_int8" in e.value.fix


def test_config_round_trip_and_labels():
    for cfg in (CFG, StaticInt8FxConfig(observer="minmax", per_channel=False, max_samples=32, skip=("head.*",))):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert CFG.needs_calibration and CFG.label() == "static-int8-ts"
    assert StaticInt8FxConfig(observer="moving_average", per_channel=False).label() == "static-int8-ts-moving-average-per-tensor"
    with pytest.raises(ValueError, match="observer"):
        StaticInt8FxConfig(observer="percentile")
    assert "static-int8-ts" in [r.name for r in candidates(torch.device("cpu"))]


@pytest.mark.parametrize("observer,per_channel", [("minmax", False), ("moving_average", True)])
def test_observers_and_per_tensor_weights(observer, per_channel):
    model = tiny_models.mlp()
    example = Example((randn(8, 64),))
    cfg = StaticInt8FxConfig(observer=observer, per_channel=per_channel, max_samples=20)
    ctx = ctx_for(example, batches((8, 64), n=50))
    slim = handler(cfg).apply(copy.deepcopy(model), cfg, ctx)
    assert ctx.details["static_int8_fx"]["calibration"] == {"batches": 3, "samples": 24}
    with torch.no_grad():
        fid = compare(example(model), example(slim))
    # Random weights, 24 calibration rows, per-tensor weights at worst: about 21 dB here.
    assert fid.sqnr_db > 18 and fid.min_cosine >= 0.98, fid


@pytest.mark.parametrize("cfg", [CFG, SR], ids=["ts", "ts-x86-sr"])
def test_artifact_reloads_to_identical_outputs(tmp_path, cfg):
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    calib = batches((4, 3, 16, 16), n=4)
    recipe = Recipe((cfg,))
    slim = apply(copy.deepcopy(model), recipe, ctx_for(example, calib))
    with torch.no_grad():
        ref = example(slim)
    folder = str(tmp_path / "m")
    artifacts.save(folder, model, recipe, example, spec="tiny_models:cnn", reference_output=ref, calibration=calib,
                   optimized=slim)
    reloaded = artifacts.load(folder, copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(example(reloaded), ref)
    # The frozen TorchScript module is saved beside it and stands alone (torch.jit.load / libtorch).
    assert artifacts.read_manifest(folder)["torchscript"] == artifacts.TORCHSCRIPT
    with torch.no_grad():
        assert torch.equal(example(torch.jit.load(f"{folder}/{artifacts.TORCHSCRIPT}")), ref)


def test_sensitivity_probe_ranks_the_layers():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    probe = make_probe(model, CFG, ctx_for(example, batches((4, 3, 16, 16), n=2)))
    # Ranked on the PT2E simulation of the same math; the names are the model's, so the fallback's
    # skip=(...) retry lands on the same layers in the FX flow.
    assert probe.layers == {"features.0": "Conv2d", "features.3": "Conv2d", "head.1": "Linear", "head.3": "Linear"}
    ctx = ctx_for(example, batches((4, 3, 16, 16), n=2))
    handler(CFG).apply(copy.deepcopy(model), with_float_layers(CFG, ["head.3"]), ctx)
    assert ctx.details["static_int8_fx"]["left_in_float"] == ["head.3 (Linear)"]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, x):
        h = self.body(x)
        return {"a": self.a(h), "b": self.b(h)}


def test_dict_outputs_keep_their_structure():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    example = Example((randn(4, 3, 8, 8),))
    slim = apply(copy.deepcopy(model), Recipe((CFG,)), ctx_for(example, batches((4, 3, 8, 8), n=4)))
    with torch.no_grad():
        ref, out = example(model), example(slim)
    assert set(out) == {"a", "b"}
    assert all(compare(ref[k], out[k]).min_cosine >= 0.99 for k in ref)



def test_static_runtime_runs_the_same_kernels_bit_for_bit():
    """Static Runtime only changes who calls the kernels: same outputs as the interpreter, any batch,
    dict outputs kept; the TorchScript module under it is what gets saved and sized."""
    from torchslim.techniques.torchscript import StaticRuntime, script_module

    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    calib = batches((4, 3, 16, 16), n=4)
    ctx = ctx_for(example, calib)
    slim = apply(copy.deepcopy(model), Recipe((SR,)), ctx)
    interp = apply(copy.deepcopy(model), Recipe((StaticInt8FxConfig(engine="x86"),)), ctx_for(example, calib))
    assert isinstance(slim, StaticRuntime) and isinstance(script_module(slim), torch.jit.ScriptModule)
    assert ctx.details["static_int8_fx"]["engine"] == "x86" and ctx.details["static_int8_fx"]["runtime"] == "static runtime"
    assert "static runtime" in ctx.notes[-1]
    other = randn(7, 3, 16, 16, seed=5)
    with torch.no_grad():
        for x in (example.args[0], other):
            assert torch.equal(slim(x), interp(x))
        assert compare(model(other), slim(other)).min_cosine >= 0.99
        copied = copy.deepcopy(slim)
        assert torch.equal(copied(other), slim(other))
    assert serialized_bytes(slim) == serialized_bytes(interp)
    heads = TwoHeads().eval()
    ex2 = Example((randn(4, 3, 8, 8),))
    out = apply(copy.deepcopy(heads), Recipe((SR,)), ctx_for(ex2, batches((4, 3, 8, 8), n=4)))(ex2.args[0])
    assert set(out) == {"a", "b"}


def test_static_runtime_labels_and_refusals():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    calib = batches((4, 3, 16, 16), n=4)
    assert SR.label() == "static-int8-ts-x86-sr" and config_from_dict(json.loads(json.dumps(SR.to_dict()))) == SR
    assert SR.pt2e() == StaticInt8Config() and make_probe(model, SR, ctx_for(example, calib)).layers
    assert "static-int8-ts-x86-sr" in [r.name for r in candidates(torch.device("cpu"))]
    with pytest.raises(ValueError, match="unknown engine"):
        StaticInt8FxConfig(engine="qnnpack-ish")
    with pytest.raises(ValueError, match="static_runtime"):
        StaticInt8FxConfig(static_runtime="yes")
    # oneDNN-packed Linears have no out= variant for Static Runtime: refused, with the engine to use.
    onednn = StaticInt8FxConfig(engine="onednn", static_runtime=True)
    if "onednn" in torch.backends.quantized.supported_engines:
        with pytest.raises(NotApplicable, match="Static Runtime cannot run this model") as e:
            apply(copy.deepcopy(model), Recipe((onednn,)), ctx_for(example, calib))
        assert "engine='x86'" in e.value.fix


class ClampedSE(nn.Module):
    """Hardtanh and clamp calls on INT8 tensors, and an SE gate (sigmoid) with a ReLU6 inside."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.tanh = nn.Hardtanh(-3.0, 3.0)

    def forward(self, x):
        h = torch.nn.functional.hardtanh(self.tanh(self.conv(x)), -2.0, 2.0).clamp(min=-1.5)
        return h * torch.sigmoid(self.gate(torch.nn.functional.relu6(h)))


@pytest.mark.parametrize("name", ["mobilenet-ish", "clamped-se"])
def test_static_runtime_runs_depthwise_cnns_with_relu6_and_se_blocks(name):
    """Issue 27: Static Runtime runs sigmoid and clamp/hardtanh through out= variants with no INT8
    kernel ("Could not run 'aten::clamp.out'" from the second call on, '"sigmoid_cpu" not
    implemented for QUInt8'). ReLU6 becomes relu6, sigmoid/clamp the quantized:: ops: the same
    outputs as the interpreter, bit for bit, call after call."""
    import sweep_models

    model = sweep_models.MobileNetish().eval() if name == "mobilenet-ish" else ClampedSE().eval()
    example = Example((randn(2, 3, 32, 32),))
    calib = batches((2, 3, 32, 32), n=4)
    ctx = ctx_for(example, calib)
    slim = apply(copy.deepcopy(model), Recipe((SR,)), ctx)
    interp = apply(copy.deepcopy(model), Recipe((StaticInt8FxConfig(engine="x86"),)), ctx_for(example, calib))
    assert ctx.details["static_int8_fx"]["static_runtime_kernels"] == (1 if name == "mobilenet-ish" else 4)
    with torch.no_grad():
        for x in (example.args[0], example.args[0], randn(2, 3, 32, 32, seed=7)):
            assert torch.equal(slim(x), interp(x))
        assert compare(model(example.args[0]), slim(example.args[0])).min_cosine > 0.9


class FlattenTwice(nn.Module):
    """A flatten with two users and a Linear called twice: neither may be reordered."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.fc(h) + self.fc(h.flip(0)), h


@pytest.mark.parametrize("per_channel", [True, False])
def test_channels_last_flatten_gives_the_same_outputs_bit_for_bit(per_channel):
    """flatten(permute(x)) into a Linear with permuted weight columns: the same integer dot products."""
    from torchslim.quant import fx
    from torchslim.techniques.static_int8_fx import _flatten_channels_last, _inline_flatten

    model = tiny_models.cnn()
    _inline_flatten(model)
    x = randn(4, 3, 16, 16)
    engine = fx.engine(False)
    prepared = fx.prepare(model, (x,), engine, "minmax", per_channel, False)
    with torch.no_grad():
        for ex in batches((4, 3, 16, 16), n=4):
            ex(prepared)
        converted = fx.convert(prepared, engine)
        other = randn(3, 3, 16, 16, seed=9)
        ref, ref_other = converted(x), converted(other)
        assert _flatten_channels_last(converted, Example((x,)), engine) == 1
        assert "permute" in converted.code
        assert torch.equal(converted(x), ref) and torch.equal(converted(other), ref_other)
    twice = FlattenTwice().eval()
    ex = Example((randn(2, 3, 8, 8),))
    slim = apply(copy.deepcopy(twice), Recipe((CFG,)), ctx_for(ex, batches((2, 3, 8, 8), n=4)))
    assert "aten::permute" not in ops(slim)
    with torch.no_grad():
        assert all(compare(a, b).min_cosine >= 0.99 for a, b in zip(ex(twice), ex(slim)))


def test_public_apply_takes_calibration_batches():
    """torchslim.apply(..., calibration=): a DataLoader of inputs, a list, a function; bad input is one clear error."""
    import torchslim

    model = tiny_models.cnn()
    x = randn(4, 3, 16, 16)
    data = torch.utils.data.DataLoader(randn(32, 3, 16, 16, seed=3), batch_size=4)
    recipe = Recipe((CFG,))
    with torch.no_grad():
        a = torchslim.apply(copy.deepcopy(model), recipe, x, calibration=data)(x)
        b = torchslim.apply(copy.deepcopy(model), recipe, x, calibration=lambda: list(data))(x)
    assert torch.equal(a, b) and compare(model(x), a).min_cosine >= 0.99
    with pytest.raises(NotApplicable, match="needs calibration data"):
        torchslim.apply(copy.deepcopy(model), recipe, x)
    with pytest.raises(SlimError, match="empty"):
        torchslim.apply(copy.deepcopy(model), recipe, x, calibration=[])
    with pytest.raises(SlimError, match="not iterable"):
        torchslim.apply(copy.deepcopy(model), recipe, x, calibration=3)
    with pytest.raises(SlimError):
        torchslim.apply(copy.deepcopy(model), recipe, x, calibration=[randn(4, 3, 8)])
