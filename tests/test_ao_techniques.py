"""torchao dynamic INT8 and weight-only INT8/INT4 on real kernels (CPU): fidelity, size, the kernel
each path compiles to, skips and refusals, and config round trips.

Thresholds (min per-row cosine vs FP32 eager, random-weight 3x Linear(256) MLP, batch 8):
- INT8 (dynamic or weight-only): >= 0.999. Measured 0.9998-0.99996: per-channel INT8 weights (and
  per-token INT8 activations) lose ~45 dB SQNR per layer.
- INT4 groups of 32/64/128 (RTN or HQQ): >= 0.98. Measured 0.993-0.995: 16 levels per group, plus
  BF16 activations where the fast kernel runs. 0.98 leaves room for other ISAs' rounding.
Sizes (torch.save'd state dict, this Linear-only model): INT8 < 0.35x of FP32 (measured 0.26x),
INT4 with the packed kernel < 0.25x (measured 0.13-0.16x); the portable INTx fallback stores one
value per byte (~0.27x).
"""
import copy
import io
import json
import re

import pytest
import torch
import torch.nn as nn

import tiny_models
from torchslim import NotApplicable
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.measure import serialized_bytes
from torchslim.recipes import Recipe, apply
from torchslim.techniques import CompileConfig, Context, InferenceModeConfig, config_from_dict
from torchslim.techniques.ao_dynamic import AoInt8DynamicConfig
from torchslim.techniques.weight_only import WeightOnlyConfig, plan

pytest.importorskip("torchao")

CPU = torch.device("cpu")


def mlp3():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 256)).eval()


def example():
    return Example((torch.randn(8, 256, generator=torch.Generator().manual_seed(1)),))


def run(model, steps, ex=None):
    ex = ex or example()
    ctx = Context(device=CPU, example=ex)
    slim = apply(copy.deepcopy(model), Recipe(tuple(steps)), ctx)
    with torch.no_grad():
        out = ex(slim)
    return slim, out, ctx


CASES = [
    (AoInt8DynamicConfig(), 0.999, 0.35),
    (WeightOnlyConfig(bits=8), 0.999, 0.35),
    (WeightOnlyConfig(bits=8, activation_dtype="fp32"), 0.999, 0.35),
    (WeightOnlyConfig(bits=4, group_size=32), 0.98, 0.25),
    (WeightOnlyConfig(bits=4, group_size=64), 0.98, 0.25),
    (WeightOnlyConfig(bits=4, group_size=128), 0.98, 0.25),
    (WeightOnlyConfig(bits=4, group_size=128, method="hqq"), 0.98, 0.25),
    (WeightOnlyConfig(bits=4, group_size=256), 0.98, 0.35),  # no CPU packed kernel for 256: INTx
]


@pytest.mark.parametrize("cfg,min_cos,max_size", CASES, ids=[c[0].label() for c in CASES])
def test_quantized_mlp_keeps_outputs_and_shrinks(cfg, min_cos, max_size):
    model = mlp3()
    ex = example()
    with torch.no_grad():
        ref = ex(model)
    slim, out, ctx = run(model, [cfg], ex)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    fid = compare(ref, out)
    assert fid.finite
    assert fid.min_cosine >= min_cos, fid
    d = ctx.details[cfg.name]
    assert d["quantized"] == ["0", "2", "4"] and d["skipped"] == {}
    if isinstance(cfg, WeightOnlyConfig) and cfg.bits == 4 and d["kernel"] == "intx":
        max_size = 0.35  # the portable fallback stores INT4 values one per byte
    ratio = serialized_bytes(slim) / serialized_bytes(model)
    assert ratio < max_size, ratio
    assert d["bytes_after"] / d["bytes_before"] == pytest.approx(ratio, rel=0.02)
    assert any(n.startswith("weights on disk:") for n in ctx.notes)


def test_kernel_choice_on_this_cpu():
    """The plan names the path each config takes; the fallback says the gain is size only."""
    p8, p4, p256 = (plan(c, CPU) for c in (WeightOnlyConfig(8), WeightOnlyConfig(4, 128), WeightOnlyConfig(4, 256)))
    assert p8.kernel == "int8" and p256.kernel == "intx"
    assert p4.kernel in ("int4-cpu", "intx")
    assert plan(WeightOnlyConfig(4, 128, activation_dtype="fp32"), CPU).kernel == "intx"
    assert plan(WeightOnlyConfig(4, 128, symmetric=True), CPU).kernel == "intx"
    _, _, ctx = run(mlp3(), [WeightOnlyConfig(4, 256)])
    assert any("the gain is size only" in n for n in ctx.notes)


def _compiled_code(slim, ex):
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    out, code = run_and_get_code(lambda: ex(slim))
    return out, "\n".join(code)


def test_ao_int8_dynamic_then_compile_runs_the_int8_gemm():
    model, ex = mlp3(), example()
    with torch.no_grad():
        ref = ex(model)
    ctx = Context(device=CPU, example=ex)
    slim = apply(copy.deepcopy(model), Recipe((AoInt8DynamicConfig(), CompileConfig(), InferenceModeConfig())), ctx)
    out, code = _compiled_code(slim, ex)
    # Inductor's freezing passes turn torchao's int8 matmul into oneDNN's prepacked qlinear; where
    # that pattern does not match, it stays aten._int_mm (also an INT8 GEMM).
    assert re.search(r"onednn\.qlinear|\b_int_mm\b", code), "Inductor did not emit an INT8 GEMM"
    assert out.dtype == torch.float32
    assert compare(ref, out).min_cosine >= 0.999
    assert Recipe((AoInt8DynamicConfig(), CompileConfig())).name == "ao-int8-dynamic+compile"


def test_weight_only_then_compile_runs_the_packed_kernels():
    if plan(WeightOnlyConfig(4, 128), CPU).kernel != "int4-cpu":
        pytest.skip("no BF16 / CPU INT4 kernel here")
    model, ex = mlp3(), example()
    with torch.no_grad():
        ref = ex(model)
    for cfg, kernel, min_cos in ((WeightOnlyConfig(8), "_weight_int8pack_mm", 0.999),
                                 (WeightOnlyConfig(4, 128), "_weight_int4pack_mm_for_cpu", 0.98)):
        slim = apply(copy.deepcopy(model), Recipe((cfg, CompileConfig(), InferenceModeConfig())), Context(CPU, ex))
        out, code = _compiled_code(slim, ex)
        assert kernel in code, cfg.label()
        assert out.dtype == torch.float32 and compare(ref, out).min_cosine >= min_cos


@pytest.mark.parametrize("cfg", [AoInt8DynamicConfig(skip=("2", "4")), WeightOnlyConfig(4, 64, skip=("[24]",))],
                         ids=["ao-int8-dynamic", "int4"])
def test_skip_patterns_keep_layers_float(cfg):
    slim, out, ctx = run(mlp3(), [cfg])
    inner = getattr(slim, "inner", slim)
    assert type(inner[2].weight) is nn.Parameter and type(inner[4].weight) is nn.Parameter
    assert type(inner[0].weight) is not nn.Parameter  # a torchao tensor subclass
    d = ctx.details[cfg.name]
    assert d["quantized"] == ["0"] and set(d["skipped"]) == {"2", "4"}
    assert "skip pattern" in d["skipped"]["2"]
    assert any(n.startswith("left in float: Linear x2") for n in ctx.notes), ctx.notes


def test_skip_patterns_use_the_users_names_under_wrappers():
    """An earlier wrapping step (here inference mode) prefixes names with 'inner.'; patterns and
    the recorded names still use the model's own names."""
    _, _, ctx = run(mlp3(), [InferenceModeConfig(), AoInt8DynamicConfig(skip=("4",))])
    d = ctx.details["ao_int8_dynamic"]
    assert d["quantized"] == ["0", "2"] and list(d["skipped"]) == ["4"]


def test_small_and_indivisible_layers_stay_float_and_are_reported():
    # tiny_models.mlp: Linear(64,256), Linear(256,256), Linear(256,10)
    model = tiny_models.mlp()
    ex = Example((torch.randn(8, 64, generator=torch.Generator().manual_seed(1)),))
    _, _, ctx = run(model, [AoInt8DynamicConfig()], ex)
    assert ctx.details["ao_int8_dynamic"]["skipped"] == {"net.4": "256->10 features, below min_features=16"}
    _, out, ctx = run(model, [WeightOnlyConfig(4, 128)], ex)
    d = ctx.details["weight_only"]
    assert d["quantized"] == ["net.2"]
    assert "not divisible by group_size 128" in d["skipped"]["net.0"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    _, _, ctx = run(model, [AoInt8DynamicConfig(min_features=0)], ex)
    assert ctx.details["ao_int8_dynamic"]["skipped"] == {}


def test_left_in_float_note_names_other_weighted_layers():
    model = nn.Sequential(nn.Embedding(50, 64), nn.LayerNorm(64), nn.Linear(64, 64), nn.LayerNorm(64)).eval()
    ex = Example((torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0)),))
    _, out, ctx = run(model, [AoInt8DynamicConfig()], ex)
    assert "left in float: Embedding x1, LayerNorm x2 (ao-int8-dynamic covers nn.Linear)" in ctx.notes
    assert out.dtype == torch.float32


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.head = nn.Linear(32, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_tied_weights_are_reported_and_outputs_kept():
    torch.manual_seed(0)
    model = TiedLM().eval()
    ex = Example((torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0)),))
    with torch.no_grad():
        ref = ex(model)
    slim, out, ctx = run(model, [AoInt8DynamicConfig()], ex)
    assert any(n.startswith("tied weights untied") and "head (shared with embed.weight)" in n for n in ctx.notes), ctx.notes
    assert type(slim.embed.weight) is nn.Parameter
    assert compare(ref, out).min_cosine >= 0.99


def test_refuses_models_without_a_usable_linear():
    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    ex = Example((torch.randn(1, 3, 8, 8),))
    for cfg in (AoInt8DynamicConfig(), WeightOnlyConfig()):
        with pytest.raises(NotApplicable, match="no nn.Linear"):
            run(convs, [cfg], ex)
    with pytest.raises(NotApplicable, match="kept in float"):
        run(mlp3(), [AoInt8DynamicConfig(skip=("*",))])
    narrow = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    with pytest.raises(NotApplicable, match="not divisible by group_size 128"):
        run(narrow, [WeightOnlyConfig(4, 128)], Example((torch.randn(2, 64),)))
    if plan(WeightOnlyConfig(4, 128), CPU).act == torch.bfloat16:
        with pytest.raises(NotApplicable, match="FP16"):
            run(mlp3().half(), [WeightOnlyConfig(4, 128)], Example((torch.randn(2, 256).half(),)))
    scripted = torch.jit.script(mlp3())
    with pytest.raises(NotApplicable, match="TorchScript"):
        run(scripted, [AoInt8DynamicConfig()])


@pytest.mark.parametrize("kw,msg", [
    ({"bits": 3}, "bits"), ({"bits": 4}, "needs a group_size"), ({"bits": 8, "group_size": 100}, "group_size"),
    ({"method": "gptq"}, "method"), ({"bits": 8, "method": "hqq"}, "4-bit"),
    ({"activation_dtype": "fp16"}, "activation_dtype"), ({"skip": "lm_head"}, "skip"),
    ({"min_features": -1}, "min_features"), ({"symmetric": "yes"}, "symmetric"),
])
def test_weight_only_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        WeightOnlyConfig(**kw)


def test_ao_dynamic_config_validation():
    with pytest.raises(ValueError, match="skip"):
        AoInt8DynamicConfig(skip="classifier")
    with pytest.raises(ValueError, match="min_features"):
        AoInt8DynamicConfig(min_features=-3)


@pytest.mark.parametrize("cfg", [
    AoInt8DynamicConfig(), AoInt8DynamicConfig(skip=("classifier", "*.pooler.*"), min_features=64),
    WeightOnlyConfig(), WeightOnlyConfig(4, 128, method="hqq", skip=("lm_head",)),
    WeightOnlyConfig(8, 64, symmetric=False, activation_dtype="fp32"),
], ids=lambda c: c.label())
def test_json_round_trip(cfg):
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_labels():
    assert AoInt8DynamicConfig().label() == "ao-int8-dynamic"
    assert WeightOnlyConfig().label() == "int8-weight-only"
    assert WeightOnlyConfig(4, 128).label() == "int4-weight-only-g128"
    assert WeightOnlyConfig(4, 32, method="hqq").label() == "int4-weight-only-g32-hqq"
    assert WeightOnlyConfig(8, activation_dtype="fp32").label() == "int8-weight-only-fp32"


@pytest.mark.parametrize("cfg", [AoInt8DynamicConfig(), WeightOnlyConfig(8), WeightOnlyConfig(4, 64)],
                         ids=lambda c: c.label())
def test_quantized_state_dict_saves_and_loads_with_weights_only(cfg):
    """torchao registers its tensor subclasses as safe globals: torch.load(weights_only=True) works.
    Loading needs a model quantized the same way, and assign=True to take the subclass tensors."""
    model, ex = mlp3(), example()
    slim, out, _ = run(model, [cfg], ex)
    buf = io.BytesIO()
    torch.save(slim.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    other = mlp3()
    torch.manual_seed(5)
    for m in other.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    fresh, other_out, _ = run(other, [cfg], ex)
    assert not torch.equal(other_out, out)
    fresh.load_state_dict(sd, assign=True)
    with torch.no_grad():
        assert torch.equal(ex(fresh), out)
