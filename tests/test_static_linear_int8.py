"""Static INT8 Linear layers (module by module, oneDNN INT8 matmul): fidelity on real-shaped
models, composition with fast_transformer's packed path (which no graph capture can take), int8
state, reload, and refusals."""
import copy
import json
import platform

import pytest
import torch
import torch.nn as nn

import tiny_models
from torchslim import NotApplicable, SlimError, artifacts
from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.measure import serialized_bytes
from torchslim.recipes import Recipe, apply, candidates
from torchslim.techniques import Context, InferenceModeConfig
from torchslim.techniques.base import config_from_dict, handler
from torchslim.techniques.static_int8 import NO_CALIBRATION
from torchslim.techniques.static_linear_int8 import StaticInt8Linear, StaticLinearInt8Config

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 INT8 kernels")

CPU = torch.device("cpu")
CFG = StaticLinearInt8Config()


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ctx_for(example, calib=None):
    return Context(device=CPU, example=example, calibration=(lambda: calib) if calib is not None else None)


def test_mlp_keeps_outputs_with_int8_state():
    model = tiny_models.mlp()
    example = Example((randn(8, 64),))
    calib = [Example((randn(8, 64, seed=10 + i),)) for i in range(8)]
    ctx = ctx_for(example, calib)
    slim = apply(copy.deepcopy(model), Recipe((CFG, InferenceModeConfig())), ctx)
    swapped = [m for m in slim.modules() if isinstance(m, StaticInt8Linear)]
    assert len(swapped) == 3 and not any(type(m) is nn.Linear for m in slim.modules())
    with torch.no_grad():
        ref, out = example(model), example(slim)
        other = randn(3, 5, 64, seed=7)  # other leading dims: Linear semantics kept
        fid_other = compare(model(other), slim(other))
        copied = copy.deepcopy(slim)(*example.args)  # copies repack their weights
    fid = compare(ref, out)
    # Random weights, 64 calibration rows, per-tensor static inputs: about 30 dB here.
    assert out.dtype == torch.float32 and fid.finite and fid.min_cosine >= 0.995 and fid.sqnr_db > 25, fid
    assert fid_other.min_cosine >= 0.995 and torch.equal(copied, out)
    assert all(m.weight_int8.dtype == torch.int8 for m in swapped)
    assert serialized_bytes(slim) < 0.35 * serialized_bytes(model)
    d = ctx.details["static_linear_int8"]
    assert d["quantized"] == ["net.0", "net.2", "net.4"] and d["calibration"] == {"batches": 8, "samples": 64}
    assert ctx.notes[0].startswith("static INT8 on 3 Linear layer(s)")


def test_a_bare_linear_and_bf16_inputs():
    lin = nn.Linear(32, 16).eval()
    x = randn(4, 32)
    ctx = ctx_for(Example((x,)), [Example((randn(4, 32, seed=i),)) for i in range(4)])
    slim = handler(CFG).apply(copy.deepcopy(lin), CFG, ctx)
    assert isinstance(slim, StaticInt8Linear) and ctx.details["static_linear_int8"]["quantized"] == ["(model)"]
    with torch.no_grad():
        assert compare(lin(x), slim(x)).min_cosine >= 0.995
        yb = slim(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and compare(lin(x), yb.float()).min_cosine >= 0.99


def test_skip_and_layers_calibration_never_reaches():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = nn.Linear(16, 16), nn.Linear(16, 4), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = TwoPaths().eval()
    example = Example((randn(4, 16),))
    ctx = ctx_for(example, [example])
    cfg = StaticLinearInt8Config(skip=("b",))
    slim = handler(cfg).apply(copy.deepcopy(model), cfg, ctx)
    d = ctx.details["static_linear_int8"]
    assert d["quantized"] == ["a"] and d["left_in_float"] == ["b", "unused"] and d["not_called_in_calibration"] == ["unused"]
    assert type(slim.b) is nn.Linear and type(slim.unused) is nn.Linear and isinstance(slim.a, StaticInt8Linear)


def test_refusals():
    model = tiny_models.mlp()
    example = Example((randn(8, 64),))
    h = handler(CFG)
    assert h.applies(model, CFG, ctx_for(example)) == NO_CALIBRATION
    assert "CPUs only" in h.applies(model, CFG, Context(device=torch.device("cuda"), example=example, calibration=list))
    assert "no nn.Linear" in h.applies(nn.Sequential(nn.ReLU()), CFG, ctx_for(example, []))
    with pytest.raises(SlimError, match="the calibration set is empty"):
        h.apply(copy.deepcopy(model), CFG, ctx_for(example, []))
    with pytest.raises(SlimError, match=r"rank 3"):
        h.apply(copy.deepcopy(model), CFG, ctx_for(example, [Example((randn(8, 64, 1),))]))
    with pytest.raises(NotApplicable, match="every nn.Linear is in skip"):
        h.apply(copy.deepcopy(model), StaticLinearInt8Config(skip=("net.*",)), ctx_for(example, [example]))
    with pytest.raises(ValueError, match="per-channel"):
        StaticLinearInt8Config(per_channel=False)


def test_config_round_trip_and_candidates():
    cfg = StaticLinearInt8Config(observer="minmax", max_samples=64, skip=("pooler.*",))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert CFG.label() == "static-int8-linear" and cfg.label() == "static-int8-linear-minmax-skip"
    assert "fast-transformer+static-int8-linear" in [r.name for r in candidates(CPU)]


# ---------------------------------------------------------------- with fast_transformer's packing

T = pytest.importorskip("transformers")


def _bert():
    from torchslim.loading import HFModel

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64, attn_implementation="sdpa")
    return HFModel(T.BertModel(cfg).eval()).eval()


def _padded(batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (batch, seq), generator=g)
    lens = torch.randint(2, seq + 1, (batch,), generator=g)
    lens[0] = seq
    return ids, (torch.arange(seq)[None, :] < lens[:, None]).long()


def _masked_min_cos(a, b, mask):
    keep = mask.bool()
    return torch.nn.functional.cosine_similarity(a[keep].float(), b[keep].float(), dim=-1).min().item()


def test_composes_with_fast_transformer_packing(tmp_path):
    from torchslim.techniques.fast_transformer import FastTransformerConfig

    model = _bert()
    ids, mask = _padded(6, 24, seed=1)
    example = Example((ids, mask))
    calib = [Example(_padded(6, 24, seed=10 + i)) for i in range(6)]
    recipe = Recipe((FastTransformerConfig(), CFG, InferenceModeConfig()))
    ctx = ctx_for(example, calib)
    slim = apply(copy.deepcopy(model), recipe, ctx)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, StaticInt8Linear) for m in slim.modules()) == n_linear  # pooler included
    with torch.no_grad():
        ref, out = model(ids, mask), slim(ids, mask)
    assert _masked_min_cos(ref, out, mask) >= 0.99
    # Calibration ran through the packed path: the observed rows are real tokens only.
    assert ctx.details["static_linear_int8"]["calibration"] == {"batches": 6, "samples": 36}
    folder = str(tmp_path / "bert")
    artifacts.save(folder, model, recipe, example, spec=None, reference_output=out, calibration=calib)
    reloaded = artifacts.load(folder, copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask), out)
