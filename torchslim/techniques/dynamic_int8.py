"""Dynamic INT8 on PyTorch's eager kernels (fbgemm/oneDNN): int8 weights, activations quantized per
call, for Linear, LSTM, GRU (and opt-in Embedding); MHA and GPT-2 Conv1D are rewritten to expose Linears."""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import device as dev
from ..quant import legacy, quantized_engine
from .base import Context, TechniqueConfig, register

LAYERS = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU, "Embedding": nn.Embedding}
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
_CONVS = (nn.modules.conv._ConvNd,)


@dataclass(frozen=True)
class DynamicInt8Config(TechniqueConfig):
    """layers: which kinds to quantize. "Linear" also covers nn.MultiheadAttention's projections and
    GPT-2's Conv1D. "Embedding" (weight-only: int8 rows, a scale and an offset per row) is opt-in:
    alone it keeps all-MiniLM-L6-v2's embeddings at cosine 0.9999, but on top of INT8 Linears it
    moved the model's min cosine from 0.919 to 0.891 at length 128 (0.915 -> 0.911 at length 48)."""

    name = "dynamic_int8"
    lossy = True
    # Per-channel weights by default: with per-tensor weights all-MiniLM-L6-v2's embedding cosine
    # fell to about 0.93, per-channel kept 0.97+. Layers left in float are listed with the reason in
    # ctx.details["dynamic_int8"]["float"].
    layers: tuple[str, ...] = ("Linear", "LSTM", "GRU")
    per_channel: bool = True

    def __post_init__(self):
        bad = set(self.layers) - set(LAYERS)
        if bad:
            raise ValueError(f"dynamic INT8 covers {sorted(LAYERS)}, not {sorted(bad)}")

    def label(self) -> str:
        return "dynamic-int8" + ("" if self.per_channel else "-per-tensor") + ("-emb" if "Embedding" in self.layers else "")


# ----------------------------------------------------------------------------- weight-only INT8 embedding

class Int8Embedding(nn.Module):
    """nn.Embedding with int8 rows and a float scale and offset per row (asymmetric: each row's
    min..max onto -128..127, as torch.ao's embedding quantization; real embedding rows are rarely
    centred). Looks rows up in int8 and dequantizes only those; `weight` gives the dequantized table
    for code that reads it."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        w = emb.weight.detach().float()
        lo, hi = w.amin(1), w.amax(1)
        scale = (hi - lo).clamp_min(1e-12) / 255
        q = torch.round((w - lo[:, None]) / scale[:, None]).clamp(0, 255) - 128
        self.register_buffer("qweight", q.to(torch.int8))
        self.register_buffer("scale", scale.to(emb.weight.dtype))
        self.register_buffer("offset", (lo + 128 * scale).to(emb.weight.dtype))  # row = qweight * scale + offset
        self.num_embeddings, self.embedding_dim, self.padding_idx = emb.num_embeddings, emb.embedding_dim, emb.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return torch.addcmul(self.offset[:, None], self.qweight.to(self.scale.dtype), self.scale[:, None])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q = F.embedding(ids, self.qweight).to(self.scale.dtype)
        return torch.addcmul(F.embedding(ids, self.offset[:, None]), q, F.embedding(ids, self.scale[:, None]))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 weights, scale and offset per row"


def embedding_reason(m: nn.Module) -> str | None:
    """Why an embedding stays in float, or None."""
    if type(m) is not nn.Embedding:
        return f"{type(m).__name__} subclasses nn.Embedding: its forward may differ"
    if m.max_norm is not None:
        return "max_norm renormalizes the float rows in place at every lookup"
    if not m.weight.is_floating_point():
        return "its weight is not floating point"
    return None


# ----------------------------------------------------------------------------- nn.MultiheadAttention
# Stock tools leave MHA's projections in float (in_proj is a bare Parameter, out_proj a
# NonDynamicallyQuantizableLinear), and in torch 2.13 nn.TransformerEncoderLayer's fused fast path
# crashes on quantized feed-forward Linears (it reads `.weight.device`, a method there). Each MHA
# becomes LinearMultiheadAttention (same parameters; FP32 outputs equal within rounding), quantized
# like any Linear; the layers around it take PyTorch's regular (non-fused) path.

def _param(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone(), t.requires_grad)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear on these tensors (shared where they are Parameters, copied where they are slices)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = _param(weight)
    if bias is not None:
        lin.bias = _param(bias)
    return lin


def _float_mask(mask: torch.Tensor | None, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool (True = masked) or additive float mask as an additive float mask, as PyTorch's MHA reads it."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask.to(dtype)


class LinearMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's forward, with its projections as nn.Linear modules (fused `in_proj`
    for q|k|v, or q_proj/k_proj/v_proj; `out_proj`) so dynamic INT8 can quantize them. Same call
    signature, masks, batch_first/unbatched inputs and returned weights as the original."""

    # nn.MultiheadAttention's names for a fused float in-projection: None here (there is none), as with
    # separate kdim/vdim weights. nn.TransformerEncoderLayer reads them and then skips its fused fast
    # path, which cannot run quantized Linears.
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention, separate: bool = False):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        self.kdim, self.vdim, self.batch_first, self.dropout = mha.kdim, mha.vdim, mha.batch_first, mha.dropout
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim
        bias = mha.in_proj_bias
        if mha._qkv_same_embed_dim and not separate:
            self.in_proj = _linear(mha.in_proj_weight, bias)
        else:
            ws = (mha.in_proj_weight.chunk(3) if mha._qkv_same_embed_dim
                  else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
            bs = bias.chunk(3) if bias is not None else (None, None, None)
            self.q_proj, self.k_proj, self.v_proj = (_linear(w, b) for w, b in zip(ws, bs))
        self.out_proj = _linear(mha.out_proj.weight, mha.out_proj.bias)
        self.train(mha.training)

    def _project(self, query, key, value, same_qkv: bool, same_kv: bool):
        if not hasattr(self, "in_proj"):
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if same_qkv:
            return self.in_proj(query).chunk(3, -1)
        e = self.embed_dim  # a cross-attention call on the fused projection: unused thirds are computed too
        q = self.in_proj(query)[..., :e]
        if same_kv:
            return (q, *self.in_proj(key)[..., e:].chunk(2, -1))
        return q, self.in_proj(key)[..., e:2 * e], self.in_proj(value)[..., 2 * e:]

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        same_qkv, same_kv = query is key and key is value, key is value
        batched = query.dim() == 3
        if not batched:  # [L, E]: a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._project(query, key, value, same_qkv, same_kv)
        n, tgt, src, h = q.shape[0], q.shape[1], k.shape[1], self.num_heads
        q, k, v = (t.unflatten(-1, (h, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        mask, causal = self._mask(attn_mask, key_padding_mask, is_causal, need_weights, n, tgt, src, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            w = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-2, -1))
            w = torch.softmax(w if mask is None else w + mask, dim=-1)
            out = torch.matmul(F.dropout(w, dropout) if dropout else w, v)
            weights = w.mean(1) if average_attn_weights else w
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt, self.embed_dim))
        if not batched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _mask(self, attn_mask, key_padding_mask, is_causal, need_weights, n, tgt, src, dtype):
        """The additive [*, heads, tgt, src] mask nn.MultiheadAttention builds, and whether SDPA's
        is_causal replaces it (as there: a causal hint, no key padding mask, no weights returned)."""
        kpm = _float_mask(key_padding_mask, "key_padding_mask", dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        if is_causal and kpm is None and not need_weights:
            return None, True
        mask = _float_mask(attn_mask, "attn_mask", dtype)
        if mask is not None:
            mask = mask.view(1, 1, tgt, src) if mask.dim() == 2 else mask.view(n, self.num_heads, tgt, src)
        if kpm is not None:
            kpm = kpm.view(n, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        return mask, False


def mha_reason(m: nn.MultiheadAttention) -> str | None:
    """Why an nn.MultiheadAttention keeps PyTorch's module (projections in float), or None."""
    if type(m) is not nn.MultiheadAttention:
        return f"{type(m).__name__} subclasses nn.MultiheadAttention: its forward may differ"
    if m.bias_k is not None or m.add_zero_attn:
        return "nn.MultiheadAttention with add_bias_kv / add_zero_attn is kept as PyTorch's module"
    return None


# ----------------------------------------------------------------------------- GPT-2 Conv1D

def _is_conv1d(m: nn.Module) -> bool:
    mod = sys.modules.get("transformers.pytorch_utils")  # only present if transformers was imported
    return mod is not None and type(m) is getattr(mod, "Conv1D", ())


def conv1d_as_linear(m: nn.Module) -> nn.Linear:
    """A Hugging Face Conv1D (y = x @ W + b, W: [in, out]) as an nn.Linear over a transposed view of
    the same weight: same parameters, bit-identical FP32 outputs (the same GEMM on the same memory)."""
    lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None, device="meta")
    lin.weight = nn.Parameter(m.weight.detach().t(), m.weight.requires_grad)
    if m.bias is not None:
        lin.bias = m.bias
    return lin.train(m.training)


# ----------------------------------------------------------------------------- rewriting

def _encoders(model: nn.Module):
    """nn.TransformerEncoders in `model`, and the originals fast_transformer keeps to fall back on."""
    for m in model.modules():
        for e in (m, m.__dict__.get("_original")):
            if isinstance(e, nn.TransformerEncoder):
                yield e


def prepare(holder: nn.Module, cfg: DynamicInt8Config) -> dict[str, str]:
    """FP32-equivalent rewrites that expose Linears to quantization (in place, under a holder module
    so the model itself can be replaced): GPT-2 Conv1D -> nn.Linear, nn.MultiheadAttention ->
    LinearMultiheadAttention. Returns {module name: what it was}."""
    if "Linear" not in cfg.layers:
        return {}
    done: dict[str, str] = {}
    modules = dict(holder.named_modules())
    for name, m in list(modules.items()):
        if _is_conv1d(m):
            holder.set_submodule(name, conv1d_as_linear(m))
            done[name] = "Conv1D"
        elif isinstance(m, nn.MultiheadAttention) and mha_reason(m) is None:
            parent = modules.get(name.rpartition(".")[0])
            cross = isinstance(parent, nn.TransformerDecoderLayer) and parent.multihead_attn is m
            holder.set_submodule(name, LinearMultiheadAttention(m, separate=cross))
            done[name] = "MultiheadAttention"
    if any(v == "MultiheadAttention" for v in done.values()):
        for enc in _encoders(holder):
            enc.use_nested_tensor = False  # the nested-tensor path runs only with the fused fast path
    for m in holder.modules():  # a PyTorch MHA kept beside quantized Linears: its layer's fused path would crash
        if isinstance(m, nn.TransformerEncoderLayer) and isinstance(m.self_attn, nn.MultiheadAttention):
            m.activation_relu_or_gelu = 0  # read only to pick that fast path; the math uses m.activation
    return done


def _own_float_params(m: nn.Module) -> bool:
    return any(p.is_floating_point() for p in m.parameters(recurse=False))


def _rnn_reason(m: nn.Module) -> str | None:
    if type(m) not in (nn.LSTM, nn.GRU):
        return f"{type(m).__name__} subclasses nn.{'LSTM' if isinstance(m, nn.LSTM) else 'GRU'}: its forward may differ"
    if not m.bias:
        return "an RNN without bias: torch.ao's dynamic INT8 RNN requires bias"
    if getattr(m, "proj_size", 0):
        return "an LSTM with proj_size: torch.ao's dynamic INT8 LSTM computes wrong shapes with it"
    return None


def _float_reason(m: nn.Module, cfg: DynamicInt8Config) -> str:
    kind = next((k for k, t in LAYERS.items() if isinstance(m, t)), None)
    if kind is not None and kind not in cfg.layers:
        return f"{kind} is not in layers={list(cfg.layers)}"
    if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "the output projection of an nn.MultiheadAttention kept as PyTorch's module (see that entry)"
    if isinstance(m, nn.Linear):
        return f"{type(m).__name__} subclasses nn.Linear: its forward may differ"
    if isinstance(m, nn.Embedding):
        return embedding_reason(m) or "not quantized"
    if isinstance(m, (nn.LSTM, nn.GRU)):
        return _rnn_reason(m) or "not quantized"
    if isinstance(m, nn.MultiheadAttention):
        if "Linear" not in cfg.layers:
            return "its projections follow 'Linear', which is not in layers"
        return mha_reason(m) or "not rewritten"
    if isinstance(m, _NORMS):
        return "a normalization layer: few weights, sensitive to rounding, no INT8 kernel"
    if isinstance(m, nn.EmbeddingBag):
        return "nn.EmbeddingBag is not covered (nn.Embedding is)"
    if isinstance(m, _CONVS):
        return "a convolution: dynamic INT8 has no eager conv kernel (static_int8 quantizes convolutions)"
    params = ", ".join(n for n, p in m.named_parameters(recurse=False) if p.is_floating_point())
    return f"its own parameters ({params}) are not a layer type dynamic INT8 covers (Linear, LSTM, GRU, Embedding)"


def _kind(m: nn.Module, cfg: DynamicInt8Config) -> str | None:
    """What to quantize `m` as ("Linear", "LSTM", "GRU", "Embedding"), or None."""
    kind = next((k for k, t in LAYERS.items() if type(m) is t), None)  # exact types: subclasses may differ
    if kind not in cfg.layers:
        return None
    if kind == "Linear" and not m.weight.is_floating_point():
        return None
    if kind in ("LSTM", "GRU") and _rnn_reason(m) or kind == "Embedding" and embedding_reason(m):
        return None
    return kind


def plan(holder: nn.Module, cfg: DynamicInt8Config) -> tuple[dict[str, str], dict[str, str]]:
    """What to quantize ({name: kind}) and what stays in float ({name: reason}: every module that
    owns floating-point parameters and is not quantized), for a prepared model."""
    chosen: dict[str, str] = {}
    floats: dict[str, str] = {}
    for name, m in holder.named_modules():
        kind = _kind(m, cfg)
        if kind:
            chosen[name] = kind
        elif _own_float_params(m):
            floats[name] = _float_reason(m, cfg)
    return chosen, floats


# ----------------------------------------------------------------------------- the technique

def _coverable(model: nn.Module) -> set[str]:
    kinds = set()
    for m in model.modules():
        kinds |= {k for k, t in LAYERS.items() if isinstance(m, t)}
        if _is_conv1d(m) or isinstance(m, (nn.MultiheadAttention, LinearMultiheadAttention)):
            kinds.add("Linear")
    return kinds


def _applies(model, cfg: DynamicInt8Config, ctx: Context):
    # Not techniques.predicates: compile.py's applies reaches this module through fast_transformer.
    if ctx.device.type != "cpu":
        return "PyTorch's eager INT8 kernels run on CPU only"
    if dev.int8_engine() is None:
        return "this torch build has no quantized engine (fbgemm/x86/onednn/qnnpack)"
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be quantized from outside"
    if not _coverable(model) & set(cfg.layers):
        return f"no {'/'.join(cfg.layers)} layers to quantize"
    return None


def _display(name: str) -> str:
    return name.partition(".")[2] or "(model)"  # drop the holder's "0."


@register(DynamicInt8Config, applies=_applies)
def apply_dynamic_int8(model, cfg: DynamicInt8Config, ctx: Context):
    holder = nn.Sequential(model)  # lets the model itself be a layer that gets replaced
    converted = prepare(holder, cfg)
    chosen, floats = plan(holder, cfg)
    eager = {n: LAYERS[k] for n, k in chosen.items() if k != "Embedding"}
    if eager:
        with quantized_engine(dev.int8_engine()):
            legacy.dynamic_int8(holder, eager, cfg.per_channel)
    for name, kind in chosen.items():
        if kind == "Embedding":
            holder.set_submodule(name, Int8Embedding(holder.get_submodule(name)))
    ctx.details["dynamic_int8"] = {
        "quantized": {_display(n): k for n, k in chosen.items()},
        "converted": {_display(n): f"{k} -> " + ("nn.Linear" if k == "Conv1D" else "LinearMultiheadAttention")
                      for n, k in converted.items()},
        "float": {_display(n): r for n, r in floats.items()},
        "per_channel": cfg.per_channel,
    }
    counts = Counter(k for k in chosen.values())
    ctx.notes.append("dynamic INT8: " + ", ".join(f"{k} x{c}" for k, c in sorted(counts.items()))
                     + (" (Embedding weight-only)" if counts.get("Embedding") else ""))
    if converted:
        kinds = Counter(converted.values())
        ctx.notes.append("rewritten to expose their Linears: " + ", ".join(f"{k} x{c}" for k, c in sorted(kinds.items())))
    if floats:
        by_type = Counter(type(holder.get_submodule(n)).__name__ for n in floats)
        ctx.notes.append("left in float: " + ", ".join(f"{n} x{c}" for n, c in sorted(by_type.items()))
                         + " (dynamic INT8 covers " + "/".join(cfg.layers) + "; reasons per layer in details)")
    return holder[0]
