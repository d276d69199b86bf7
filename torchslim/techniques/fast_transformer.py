"""A BetterTransformer-style fast path for Transformers: fused attention, no work on padding.

Hugging Face removed BetterTransformer in favour of SDPA attention, but SDPA still computes every
padding token, in attention and in every Linear/LayerNorm. This technique replaces supported
encoders with a forward of our own that reads the original modules' weights:

- the real tokens (attention mask 1) are gathered into one packed [total_tokens, hidden] batch;
  the embeddings, Q/K/V and output projections, feed-forward and LayerNorms run on that, so
  their cost follows the real tokens, not batch x max_length;
- attention runs per sequence: one fused `scaled_dot_product_attention` call per length bucket
  (sequences sorted by length and split into at most `max_buckets` groups; each padded only to
  its own longest row, rounded up to a multiple of 16, with a key mask), or one CUDA flash
  varlen call (`torch.nn.attention.varlen`, feature-detected, fp16/bf16 on CUDA) over the whole
  packed batch;
- the result is scattered back to [batch, seq, hidden].

Supported: Hugging Face BERT-family encoders built with `transformers` (model_type bert, roberta,
xlm-roberta, camembert, electra; this covers all-MiniLM-L6-v2), DistilBERT, and PyTorch's
`nn.TransformerEncoder` / `nn.TransformerEncoderLayer` with batch_first=True, and a lone
`nn.MultiheadAttention` (batch_first) for the calls PyTorch's own MHA fast path takes
(self-attention with a key padding mask and need_weights=False). Also:
- ViT (ViTModel, in both layer layouts transformers has used): images have no padding, so nothing
  is packed; each layer runs one fused SDPA call, without transformers' per-layer attention
  dispatch;
- GPT-2 (GPT2Model, inside GPT2LMHeadModel / GPT2ForSequenceClassification...) for the prompt
  pass: packed like the encoders, with causal attention within each sequence (SDPA is_causal per
  bucket: a bucket's padded slots follow each row's real tokens, so the causal mask alone keeps
  real queries off them). Position ids are the original's (transformers counts them over the
  padded row unless position_ids is passed), so left padding means what it means in the original.
  Calls that want a KV cache (use_cache=True, a cache passed in, as generate() does) fall back.
Models that are not handled are left unchanged, and applies() says why. Task heads around the
encoder (BertForSequenceClassification, a SentenceEmbedder...) are kept; only the encoder module is
swapped, and the replacement keeps its call signature and state-dict keys. The Linear/LayerNorm
modules are the original ones, reused as they are, so this composes with dynamic INT8 and BF16 casts
applied before or after it.

Semantics (documented, tested):
- outputs equal the original's (FP32: within 1e-4) at every real-token position, for right, left
  and ragged padding: packing follows the mask, position ids are the original ones;
- padding positions of last_hidden_state are ZERO (the original gives values there that depend on
  what the pad token attends to; they are not meaningful), with one exception in the Hugging Face
  models: where position 0 is padding (left padding), it is computed as the original does (a
  query-only token: it attends to the row's real tokens, nothing attends to it), so heads that
  read the first position (BERT's pooler_output, DistilBERT's classification heads) match the
  original under left padding too. Masked mean pooling is unaffected either way;
- a row with no real token (all padding) gives zeros for that row;
- no attention_mask means no padding;
- attention masks must be [batch, seq], bool / integer / float holding only 0 and 1; anything
  else raises SlimError. nn.TransformerEncoder takes its src_key_padding_mask (True or -inf = pad);
- calls the packed path does not cover fall back to the original module, unchanged: training
  mode, inputs_embeds, output_attentions / output_hidden_states, caches and cross-attention
  inputs, and for nn.TransformerEncoder an attention `mask` or is_causal;
- TorchScript tracing of the packed path is refused (it depends on the mask's values);
  torch.compile works with dynamic=True only, see COMPILE_NOTE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import SlimError
from . import _packing
from .base import Context, TechniqueConfig, register

BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
DISTILBERT = ("distilbert",)
VIT = ("vit",)
GPT2 = ("gpt2",)
HF_FAMILIES = BERT_LIKE + DISTILBERT + VIT + GPT2
FAMILIES = HF_FAMILIES + ("nn.TransformerEncoder", "nn.MultiheadAttention")
COMPILE_NOTE = ("with torch.compile use dynamic=True: the packing runs outside the compiled graphs and the packed "
                "token count changes every batch (with dynamic=False each new count recompiles, up to torch's "
                "recompile limit, then runs eagerly; results stay correct)")


@dataclass(frozen=True)
class FastTransformerConfig(TechniqueConfig):
    """max_buckets: at most this many attention calls per layer; sequences are grouped by length
    (the grouping that minimises padded attention work) and each group is padded to its longest
    sequence rounded up to a multiple of 16 (1: the whole batch padded to its longest sequence).
    varlen: use CUDA flash varlen attention where available (fp16/bf16 on CUDA), else the buckets."""

    name = "fast_transformer"
    max_buckets: int = 4
    varlen: bool = True

    def __post_init__(self):
        if not isinstance(self.max_buckets, int) or isinstance(self.max_buckets, bool) or self.max_buckets < 1:
            raise ValueError(f"max_buckets must be an integer >= 1, got {self.max_buckets!r}")
        if not isinstance(self.varlen, bool):
            raise ValueError(f"varlen must be true or false, got {self.varlen!r}")

    def label(self) -> str:
        return "fast-transformer"


# ----------------------------------------------------------------------------- common

def _refuse_tracing() -> None:
    if torch.jit.is_tracing():
        raise SlimError("fast_transformer's packed path depends on the attention mask's values and cannot be traced",
                        "apply TorchScript without fast_transformer, or use torch.compile")


class _Fast(nn.Module):
    """Base of the replacements: registers the original module's children under the same names
    (same parameters, same state-dict keys) and keeps the original, unregistered, to fall back on."""

    def __init__(self, original: nn.Module, cfg: FastTransformerConfig):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_original", original)
        self.max_buckets = cfg.max_buckets
        self.use_varlen = cfg.varlen
        self.training = original.training

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)  # config, dtype, get_input_embeddings, ...

    @property
    def original(self) -> nn.Module:
        return self.__dict__["_original"]

    def _attention(self, q, k, v, p: _packing.Packing, heads: int, scale: float | None,
                   causal: bool = False) -> torch.Tensor:
        width = q.shape[-1] if k is not None else q.shape[-1] // 3  # k is None: q is the fused q|k|v
        varlen = self.use_varlen and _packing.varlen_available(q, width // heads, causal)
        return _packing.attention(q, k, v, p, heads, scale, varlen=varlen, causal=causal)

    def extra_repr(self) -> str:
        return f"fast path for {type(self.original).__name__}, max_buckets={self.max_buckets}"


def _hf_fallback_needed(module: _Fast, input_ids, inputs_embeds, kwargs: dict) -> bool:
    if input_ids is None or inputs_embeds is not None or input_ids.dim() != 2:
        return True
    return _hf_extras_needed(module, kwargs)


def _hf_extras_needed(module: _Fast, kwargs: dict) -> bool:
    """Training mode, attentions / hidden states asked for (by the config or a call argument), or
    any other optional argument set: the original handles those."""
    if module.training:
        return True
    cfg = getattr(module.original, "config", None)
    if getattr(cfg, "output_attentions", False) or getattr(cfg, "output_hidden_states", False):
        return True
    return any(v is not None and v is not False for v in kwargs.values())


def _hf_output(module: _Fast, return_dict, seq: torch.Tensor, pooled: torch.Tensor | None):
    from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPoolingAndCrossAttentions

    if return_dict is None:
        return_dict = getattr(module.original.config, "return_dict", True)
    if not return_dict:
        return (seq,) if pooled is None else (seq, pooled)
    if not hasattr(module.original, "pooler"):
        return BaseModelOutput(last_hidden_state=seq)
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=seq, pooler_output=pooled)


def _expand_ids(t: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    if t.dim() == 1:
        t = t[None]
    return t.expand(batch, seq)


# ----------------------------------------------------------------------------- BERT family

class FastBertModel(_Fast):
    """Packed forward of a Hugging Face BERT-family base model (bert, roberta, xlm-roberta,
    camembert, electra): same call signature and outputs as the original (see module docs)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, *args, return_dict=None, **kwargs):
        if args or _hf_fallback_needed(self, input_ids, inputs_embeds, kwargs):
            return self.original(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, *args,
                                 return_dict=return_dict, **kwargs)
        _refuse_tracing()
        batch, seq = input_ids.shape
        keep = _packing.keep_from_attention_mask(attention_mask, (batch, seq), input_ids.device)
        p = _packing.plan(keep, batch, seq, input_ids.device, self.max_buckets, first_position=True)
        emb = self.embeddings
        pos = self._position_ids(emb, input_ids, position_ids)
        if token_type_ids is not None:
            tt = _expand_ids(token_type_ids, batch, seq)
        elif hasattr(emb, "token_type_ids"):  # the registered all-zero buffer, read the way HF does
            tt = torch.gather(emb.token_type_ids.expand(pos.shape[0], -1), 1, pos)
        else:
            tt = torch.zeros_like(input_ids)
        x = emb(input_ids=_packing.pack(input_ids, p)[None], token_type_ids=_packing.pack(tt, p)[None],
                position_ids=_packing.pack(pos, p)[None])[0]
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, self.original.config.hidden_size))
        else:
            if getattr(self, "embeddings_project", None) is not None:
                x = self.embeddings_project(x)
            for layer in self.encoder.layer:
                x = self._layer(layer, x, p)
            seq_out = _packing.unpack(x, p)
        pooler = getattr(self, "pooler", None)
        pooled = pooler(seq_out) if pooler is not None else None
        return _hf_output(self, return_dict, seq_out, pooled)

    @staticmethod
    def _position_ids(emb, input_ids, position_ids):
        batch, seq = input_ids.shape
        if position_ids is not None:
            return _expand_ids(position_ids, batch, seq)
        make = getattr(emb, "create_position_ids_from_input_ids", None)
        if make is not None and getattr(emb, "padding_idx", None) is not None:  # RoBERTa family
            return make(input_ids, emb.padding_idx)
        return emb.position_ids[:, :seq].expand(batch, seq)

    def _layer(self, layer, x, p):
        sa = layer.attention.self
        ctx = self._attention(sa.query(x), sa.key(x), sa.value(x), p, sa.num_attention_heads, sa.scaling)
        x = layer.attention.output(ctx, x)  # dense, dropout, LayerNorm(+ residual): token-wise
        return layer.output(layer.intermediate(x), x)


def _bert_reason(m: nn.Module) -> str | None:
    cfg = m.config
    if getattr(cfg, "is_decoder", False):
        return "is configured as a decoder (config.is_decoder): causal attention and caches are not handled"
    if getattr(cfg, "add_cross_attention", False):
        return "has cross-attention layers"
    pet = getattr(cfg, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        return f"uses position_embedding_type={pet!r} (relative position scores are not handled)"
    emb = getattr(m, "embeddings", None)
    layers = getattr(getattr(m, "encoder", None), "layer", None)
    if emb is None or not hasattr(emb, "word_embeddings") or layers is None or len(layers) == 0:
        return "does not have the embeddings / encoder.layer structure this version of fast_transformer knows"
    for i, layer in enumerate(layers):
        sa = getattr(getattr(layer, "attention", None), "self", None)
        ok = (sa is not None and all(hasattr(sa, a) for a in ("query", "key", "value", "num_attention_heads", "scaling"))
              and hasattr(layer.attention, "output") and hasattr(layer, "intermediate") and hasattr(layer, "output")
              and not hasattr(layer, "crossattention") and not hasattr(sa, "distance_embedding"))
        if not ok:
            return (f"layer {i} ({type(layer).__name__}) does not have the expected attention.self.query/key/value, "
                    "attention.output, intermediate, output structure")
    return None


# ----------------------------------------------------------------------------- DistilBERT

class FastDistilBertModel(_Fast):
    """Packed forward of a Hugging Face DistilBertModel."""

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, *args,
                return_dict=None, **kwargs):
        if args or _hf_fallback_needed(self, input_ids, inputs_embeds, kwargs):
            return self.original(input_ids, attention_mask, inputs_embeds, position_ids, *args,
                                 return_dict=return_dict, **kwargs)
        _refuse_tracing()
        batch, seq = input_ids.shape
        keep = _packing.keep_from_attention_mask(attention_mask, (batch, seq), input_ids.device)
        p = _packing.plan(keep, batch, seq, input_ids.device, self.max_buckets, first_position=True)
        emb = self.embeddings
        pos = _expand_ids(position_ids, batch, seq) if position_ids is not None else emb.position_ids[:, :seq].expand(batch, seq)
        x = emb(_packing.pack(input_ids, p)[None], None, _packing.pack(pos, p)[None])[0]
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, x.shape[-1]))
        else:
            for layer in self.transformer.layer:
                a = layer.attention
                ctx = self._attention(a.q_lin(x), a.k_lin(x), a.v_lin(x), p, a.n_heads, a.scaling)
                h = layer.sa_layer_norm(a.out_lin(ctx) + x)
                x = layer.output_layer_norm(layer.ffn.ff_chunk(h) + h)
            seq_out = _packing.unpack(x, p)
        return _hf_output(self, return_dict, seq_out, None)


def _distilbert_reason(m: nn.Module) -> str | None:
    emb = getattr(m, "embeddings", None)
    layers = getattr(getattr(m, "transformer", None), "layer", None)
    if emb is None or not hasattr(emb, "word_embeddings") or layers is None or len(layers) == 0:
        return "does not have the embeddings / transformer.layer structure this version of fast_transformer knows"
    for i, layer in enumerate(layers):
        a = getattr(layer, "attention", None)
        ok = (a is not None and all(hasattr(a, n) for n in ("q_lin", "k_lin", "v_lin", "out_lin", "n_heads", "scaling"))
              and all(hasattr(layer, n) for n in ("sa_layer_norm", "output_layer_norm"))
              and hasattr(getattr(layer, "ffn", None), "ff_chunk"))
        if not ok:
            return f"layer {i} ({type(layer).__name__}) does not have the DistilBERT structure expected"
    return None


# ----------------------------------------------------------------------------- ViT

class FastViTModel(_Fast):
    """Forward of a Hugging Face ViTModel with fused SDPA attention and none of the per-layer
    attention-interface dispatch. Images have no padding: nothing to pack, the outputs are the
    original's (FP32: within 1e-4) everywhere."""

    def forward(self, pixel_values=None, bool_masked_pos=None, interpolate_pos_encoding=None, attention_mask=None,
                *args, return_dict=None, **kwargs):
        if (args or attention_mask is not None or pixel_values is None or pixel_values.dim() != 4
                or _hf_extras_needed(self, kwargs)):
            return self.original(pixel_values, bool_masked_pos, interpolate_pos_encoding, attention_mask, *args,
                                 return_dict=return_dict, **kwargs)
        weight = getattr(self.embeddings.patch_embeddings.projection, "weight", None)
        if isinstance(weight, torch.Tensor) and pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.to(weight.dtype)  # as the original does
        x = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos,
                            interpolate_pos_encoding=interpolate_pos_encoding)
        batch, seq, hidden = x.shape
        p = _packing.plan(None, batch, seq, x.device, 1, align=1)  # one SDPA call per layer, no key mask
        x = _packing.pack(x, p)
        for layer in _vit_layers(self):
            a = layer.attention
            h = layer.layernorm_before(x)
            if hasattr(a, "q_proj"):  # recent transformers 5
                ctx = self._attention(a.q_proj(h), a.k_proj(h), a.v_proj(h), p, a.num_attention_heads, a.scaling)
                x = a.o_proj(ctx) + x
                x = layer.mlp(layer.layernorm_after(x)) + x
            else:  # earlier: attention.attention.query/key/value, attention.output, intermediate, output
                sa = a.attention
                ctx = self._attention(sa.query(h), sa.key(h), sa.value(h), p, sa.num_attention_heads,
                                      getattr(sa, "scaling", None))
                x = a.output(ctx, h) + x  # dense + dropout (its second argument is unused)
                x = layer.output(layer.intermediate(layer.layernorm_after(x)), x)  # dense, dropout, + residual
        seq_out = _packing.unpack(self.layernorm(x), p)
        pooled = self.pooler(seq_out) if getattr(self, "pooler", None) is not None else None
        if return_dict is None:
            return_dict = getattr(self.original.config, "return_dict", True)
        if not return_dict:
            return (seq_out,) if pooled is None else (seq_out, pooled)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(last_hidden_state=seq_out, pooler_output=pooled)


def _vit_layers(m: nn.Module):
    """ViTModel's layers: `layers` in recent transformers 5, `encoder.layer` before."""
    layers = getattr(m, "layers", None)
    return layers if layers is not None else getattr(getattr(m, "encoder", None), "layer", None)


def _vit_layer_ok(layer: nn.Module) -> bool:
    a = getattr(layer, "attention", None)
    if not all(hasattr(layer, n) for n in ("layernorm_before", "layernorm_after")) or a is None:
        return False
    if hasattr(a, "q_proj"):
        return hasattr(layer, "mlp") and all(hasattr(a, n) for n in ("k_proj", "v_proj", "o_proj", "num_attention_heads",
                                                                     "scaling"))
    sa = getattr(a, "attention", None)
    return (sa is not None and all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads"))
            and hasattr(a, "output") and hasattr(layer, "intermediate") and hasattr(layer, "output"))


def _vit_reason(m: nn.Module) -> str | None:
    layers = _vit_layers(m)
    patches = getattr(getattr(m, "embeddings", None), "patch_embeddings", None)
    if not hasattr(patches, "projection") or not layers or not hasattr(m, "layernorm"):
        return "does not have the embeddings.patch_embeddings / layers / layernorm structure of ViTModel this version knows"
    for i, layer in enumerate(layers):
        if not _vit_layer_ok(layer):
            return f"layer {i} ({type(layer).__name__}) does not have the ViT structure expected"
    return None


# ----------------------------------------------------------------------------- GPT-2 (prompt pass)

class FastGPT2Model(_Fast):
    """Packed forward of a Hugging Face GPT2Model for the prompt pass (no KV cache): causal attention
    within each sequence over its real tokens, padding skipped. Position ids are the original's
    (by default 0..seq-1 over the padded row, as transformers does), so left and right padding keep
    their meaning; real-token outputs equal the original's, padding positions are zero. Calls that
    ask for a cache (use_cache=True, a cache passed in: generate() does both) fall back to the
    original, as do training mode, inputs_embeds, cross-attention and output_attentions/hidden_states."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        import inspect

        object.__setattr__(self, "_signature", inspect.signature(original.forward))

    def forward(self, *args, **kwargs):
        call = self._packed_call(args, kwargs)
        if call is None:
            return self.original(*args, **kwargs)
        _refuse_tracing()
        input_ids, mask, position_ids, token_type_ids, return_dict = call
        batch, seq = input_ids.shape
        keep = _packing.keep_from_attention_mask(mask, (batch, seq), input_ids.device)
        p = _packing.plan(keep, batch, seq, input_ids.device, self.max_buckets)
        pos = (_expand_ids(position_ids, batch, seq) if position_ids is not None
               else torch.arange(seq, device=input_ids.device).expand(batch, seq))
        x = self.wte(_packing.pack(input_ids, p)) + self.wpe(_packing.pack(pos, p))
        if token_type_ids is not None:
            x = x + self.wte(_packing.pack(_expand_ids(token_type_ids, batch, seq), p))
        x = self.drop(x)
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, x.shape[-1]))
        else:
            for block in self.h:
                a = block.attn
                x = x + a.c_proj(self._attention(a.c_attn(block.ln_1(x)), None, None, p, a.num_heads, _gpt2_scaling(a),
                                                 causal=True))
                x = x + block.mlp(block.ln_2(x))
            seq_out = _packing.unpack(self.ln_f(x), p)
        if return_dict is None:
            return_dict = getattr(self.original.config, "return_dict", True)
        if not return_dict:
            return (seq_out,)
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=seq_out)

    def _packed_call(self, args, kwargs):
        """(input_ids, attention_mask, position_ids, token_type_ids, return_dict) when the packed path
        covers this call, else None (whatever the original's argument names are in this version)."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return None
        named = dict(bound.arguments)
        for name, param in self._signature.parameters.items():
            if param.kind is param.VAR_KEYWORD:
                named.update(named.pop(name, {}))
        names = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "return_dict")
        picked = [named.pop(n, None) for n in names]
        if named.pop("use_cache", None) or _hf_fallback_needed(self, picked[0], None, named):
            return None
        return picked


def _gpt2_scaling(a: nn.Module) -> float:
    """GPT2Attention's score scale: its `scaling` (recent transformers), else derived as it was."""
    s = getattr(a, "scaling", None)
    if s is not None:
        return s
    s = a.head_dim ** -0.5 if a.scale_attn_weights else 1.0
    return s / float(a.layer_idx + 1) if a.scale_attn_by_inverse_layer_idx else s


def _gpt2_reason(m: nn.Module) -> str | None:
    if getattr(m.config, "add_cross_attention", False):
        return "has cross-attention layers (config.add_cross_attention)"
    blocks = getattr(m, "h", None)
    if not all(hasattr(m, n) for n in ("wte", "wpe", "drop", "ln_f")) or not blocks:
        return "does not have the wte / wpe / h / ln_f structure this version of fast_transformer knows"
    for i, block in enumerate(blocks):
        a = getattr(block, "attn", None)
        ok = (a is not None and all(hasattr(a, n) for n in ("c_attn", "c_proj", "num_heads"))
              and (hasattr(a, "scaling") or all(hasattr(a, n) for n in ("head_dim", "scale_attn_weights", "layer_idx",
                                                                        "scale_attn_by_inverse_layer_idx")))
              and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp")) and not hasattr(block, "crossattention")
              and not getattr(a, "is_cross_attention", False))
        if not ok:
            return f"block {i} ({type(block).__name__}) does not have the GPT-2 structure expected"
    return None


# ----------------------------------------------------------------------------- nn.TransformerEncoder

def _torch_layer(self: _Fast, layer, x, p):
    """One nn.TransformerEncoderLayer (eval) on packed tokens; `layer` has its attributes."""
    def sa(h):
        return _packed_self_attention(self, layer.self_attn, h, p)

    def ff(h):
        return layer.linear2(layer.activation(layer.linear1(h)))

    if layer.norm_first:
        x = x + sa(layer.norm1(x))
        return x + ff(layer.norm2(x))
    x = layer.norm1(x + sa(x))
    return layer.norm2(x + ff(x))


def _packed_self_attention(fast: _Fast, mha: nn.Module, x: torch.Tensor, p: _packing.Packing) -> torch.Tensor:
    """An nn.MultiheadAttention's self-attention on packed tokens [N, E]: fused q|k|v projection,
    attention per sequence, output projection."""
    if getattr(mha, "in_proj", None) is not None:  # dynamic INT8's LinearMultiheadAttention
        qkv = mha.in_proj(x)
    else:
        qkv = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # fused [N, 3E]
    return mha.out_proj(fast._attention(qkv, None, None, p, mha.num_heads, None))


def _torch_plan(fast: "_Fast", src: torch.Tensor, key_padding_mask):
    """The packing plan of a [batch, seq, hidden] input under PyTorch's key-padding-mask convention."""
    _refuse_tracing()
    batch, seq, _ = src.shape
    keep = _packing.keep_from_key_padding_mask(key_padding_mask, (batch, seq), src.device)
    return _packing.plan(keep, batch, seq, src.device, fast.max_buckets)


class FastTransformerEncoder(_Fast):
    """Packed forward of nn.TransformerEncoder (batch_first). Padding positions are zero, as in
    PyTorch's own nested-tensor fast path."""

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        if self.training or mask is not None or is_causal or src.dim() != 3:
            return self.original(src, mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        p = _torch_plan(self, src, src_key_padding_mask)
        if p.total == 0:
            return src.new_zeros(src.shape)
        x = _packing.pack(src, p)
        for layer in self.layers:
            x = _torch_layer(self, layer, x, p)
        if getattr(self, "norm", None) is not None:
            x = self.norm(x)
        return _packing.unpack(x, p)


class FastTransformerEncoderLayer(_Fast):
    """Packed forward of a lone nn.TransformerEncoderLayer (batch_first)."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        self.norm_first = original.norm_first
        if not isinstance(original.activation, nn.Module):
            object.__setattr__(self, "activation", original.activation)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if self.training or src_mask is not None or is_causal or src.dim() != 3:
            return self.original(src, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        p = _torch_plan(self, src, src_key_padding_mask)
        if p.total == 0:
            return src.new_zeros(src.shape)
        return _packing.unpack(_torch_layer(self, self, _packing.pack(src, p), p), p)


class FastMultiheadAttention(_Fast):
    """Packed self-attention for a lone nn.MultiheadAttention (batch_first): the q|k|v and output
    projections run on the real tokens only, attention per length bucket. It takes over exactly the
    calls PyTorch's own MHA fast path takes (self-attention, need_weights=False, a key padding mask,
    no attn_mask) and, like that path's nested tensors, returns zeros at padded query positions and
    None for the weights. Every other call (need_weights=True, cross-attention, attn_mask,
    is_causal, training, unbatched) runs the original module."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        # in_proj_weight/bias are the original's own parameters, not children: register them too (same
        # keys, shared tensors), so casts, .to() and state dicts reach them. Direct assignment: the
        # attribute already resolves through __getattr__'s fallback, which register_parameter refuses.
        self._parameters.update(original.named_parameters(recurse=False))
        self._buffers.update(original.named_buffers(recurse=False))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (self.training or need_weights or attn_mask is not None or is_causal or key_padding_mask is None
                or query.dim() != 3 or not (query is key and key is value)):
            return self.original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                 attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        p = _torch_plan(self, query, key_padding_mask)
        if p.total == 0:
            return query.new_zeros(query.shape), None
        return _packing.unpack(_packed_self_attention(self, self, _packing.pack(query, p), p), p), None


def _mha_reason(mha: nn.Module) -> str | None:
    if not mha.batch_first:
        return "batch_first=False (the packed path handles batch_first=True layers)"
    fused = getattr(mha, "in_proj", None) is not None or (mha._qkv_same_embed_dim and mha.in_proj_weight is not None)
    if not fused:
        return "separate q/k/v projection weights (kdim/vdim) are not handled"
    if getattr(mha, "bias_k", None) is not None or getattr(mha, "add_zero_attn", False):
        return "add_bias_kv / add_zero_attn are not handled"
    return None


def _is_mha(m: nn.Module) -> bool:
    from .dynamic_int8 import LinearMultiheadAttention

    return type(m) is nn.MultiheadAttention or type(m) is LinearMultiheadAttention


def _torch_layer_reason(layer: nn.Module) -> str | None:
    if type(layer) is not nn.TransformerEncoderLayer:
        return f"{type(layer).__name__} is a subclass of nn.TransformerEncoderLayer whose forward may differ"
    reason = _mha_reason(layer.self_attn)
    if reason:
        return reason
    if not callable(getattr(layer, "activation", None)):
        return "its activation is not callable"
    return None


# ----------------------------------------------------------------------------- discovery

def _hf_model_type(m: nn.Module) -> str | None:
    """The model_type of a Hugging Face PreTrainedModel (base model or task model), else None."""
    cfg = getattr(m, "config", None)
    mt = getattr(cfg, "model_type", None)
    return mt if isinstance(mt, str) and hasattr(m, "base_model_prefix") else None


def _classify(m: nn.Module) -> tuple[type[_Fast] | None, str | None, str | None]:
    """(replacement class, reason it cannot be converted, family) for one module; (None, None, None)
    when the module is not an encoder itself (keep looking inside: task heads, user wrappers)."""
    if isinstance(m, _Fast):
        return None, "already converted", "converted"
    if isinstance(m, nn.TransformerEncoder):
        for i, layer in enumerate(m.layers):
            r = _torch_layer_reason(layer)
            if r:
                return None, f"layer {i}: {r}", "nn.TransformerEncoder"
        return FastTransformerEncoder, None, "nn.TransformerEncoder"
    if isinstance(m, nn.TransformerEncoderLayer):
        r = _torch_layer_reason(m)
        return (None, r, "nn.TransformerEncoderLayer") if r else (FastTransformerEncoderLayer, None, "nn.TransformerEncoderLayer")
    if _is_mha(m):
        r = _mha_reason(m)
        return (None, r, "nn.MultiheadAttention") if r else (FastMultiheadAttention, None, "nn.MultiheadAttention")
    if isinstance(m, (nn.TransformerDecoder, nn.TransformerDecoderLayer, nn.Transformer)):
        return None, "a Transformer decoder (causal / cross attention) is not handled", type(m).__name__
    mt = _hf_model_type(m)
    if mt is None:
        return None, None, None
    if mt in HF_FAMILIES:
        if not hasattr(m, "wte" if mt in GPT2 else "embeddings"):
            return None, None, None  # a task model: its base model is inside
        cls, why = ((FastBertModel, _bert_reason) if mt in BERT_LIKE else (FastDistilBertModel, _distilbert_reason)
                    if mt in DISTILBERT else (FastViTModel, _vit_reason) if mt in VIT else (FastGPT2Model, _gpt2_reason))
        r = why(m)
        return (None, r, mt) if r else (cls, None, mt)
    return None, f"model_type {mt!r} is not a family fast_transformer handles (it handles {', '.join(FAMILIES)})", mt


def _scan(model: nn.Module):
    """Top-most convertible encoders and the reasons others were left alone."""
    found: list[tuple[str, nn.Module, type[_Fast], str]] = []
    skipped: list[tuple[str, nn.Module, str]] = []

    def visit(name: str, m: nn.Module):
        cls, reason, family = _classify(m)
        if cls is not None:
            found.append((name, m, cls, family))
        elif reason is not None:
            skipped.append((name, m, reason))  # and do not look inside (a refused model's blocks)
        else:
            for child_name, child in m.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found, skipped


def has_packed_encoder(model: nn.Module) -> bool:
    """True if fast_transformer replaced an encoder inside `model` (for other techniques' applies():
    TorchScript tracing cannot capture the packed path; torch.compile wants dynamic=True)."""
    return isinstance(model, nn.Module) and any(isinstance(m, _Fast) for m in model.modules())


def _describe(name: str, m: nn.Module) -> str:
    return f"{type(m).__name__} at '{name or '(model)'}'"


def _applies(model, cfg: FastTransformerConfig, ctx: Context):
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be rewritten"
    found, skipped = _scan(model)
    if found:
        return None
    if skipped:
        return "; ".join(f"{_describe(n, m)}: {r}" for n, m, r in skipped[:3])
    return ("no Transformer encoder it handles (Hugging Face " + ", ".join(HF_FAMILIES)
            + "; nn.TransformerEncoder / nn.TransformerEncoderLayer / nn.MultiheadAttention with batch_first=True)")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    model.set_submodule(name, new)
    return model


@register(FastTransformerConfig, applies=_applies)
def apply_fast_transformer(model, cfg: FastTransformerConfig, ctx: Context):
    found, skipped = _scan(model)
    done = []
    for name, m, cls, family in found:
        model = _set_submodule(model, name, cls(m, cfg))
        done.append({"module": name or "(model)", "type": type(m).__name__, "family": family})
    ctx.notes.append("fast path (packed tokens, padding skipped; fused attention): "
                     + ", ".join(f"{d['type']} at '{d['module']}'" for d in done)
                     + "; padding positions of the hidden states are zero")
    ctx.notes.append(COMPILE_NOTE)
    for n, m, r in skipped:
        if r != "already converted":
            ctx.notes.append(f"fast_transformer left {_describe(n, m)} unchanged: {r}")
    ctx.details["fast_transformer"] = {
        "converted": done,
        "skipped": [{"module": n or "(model)", "type": type(m).__name__, "reason": r} for n, m, r in skipped],
        "attention": "cuda flash varlen where available (fp16/bf16), else fused SDPA per length bucket"
        if cfg.varlen else "fused SDPA per length bucket",
        "padding_positions": "zero (position 0 of Hugging Face encoders computed as the original does)",
    }
    return model
