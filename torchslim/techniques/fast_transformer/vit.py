"""fast_transformer for Hugging Face ViT: no padding to skip, one fused SDPA call per layer."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import packing
from .core import FastModule, hf_extras_needed


class FastViTModel(FastModule):
    """Forward of a Hugging Face ViTModel with fused SDPA attention and none of the per-layer
    attention-interface dispatch. Images have no padding: nothing to pack, the outputs are the
    original's (FP32: within 1e-4) everywhere."""

    @classmethod
    def owns(cls, m: nn.Module) -> bool:
        return hasattr(m, "embeddings")  # else a task model: its base model is inside

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
        layers = _vit_layers(m)
        patches = getattr(getattr(m, "embeddings", None), "patch_embeddings", None)
        if not hasattr(patches, "projection") or not layers or not hasattr(m, "layernorm"):
            return "does not have the embeddings.patch_embeddings / layers / layernorm structure of ViTModel this version knows"
        for i, layer in enumerate(layers):
            if not _vit_layer_ok(layer):
                return f"layer {i} ({type(layer).__name__}) does not have the ViT structure expected"
        return None

    def forward(self, pixel_values=None, bool_masked_pos=None, interpolate_pos_encoding=None, attention_mask=None,
                *args, return_dict=None, **kwargs):
        if (args or attention_mask is not None or pixel_values is None or pixel_values.dim() != 4
                or hf_extras_needed(self, kwargs)):
            return self.original(pixel_values, bool_masked_pos, interpolate_pos_encoding, attention_mask, *args,
                                 return_dict=return_dict, **kwargs)
        weight = getattr(self.embeddings.patch_embeddings.projection, "weight", None)
        if isinstance(weight, torch.Tensor) and pixel_values.dtype != weight.dtype:
            pixel_values = pixel_values.to(weight.dtype)  # as the original does
        x = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos,
                            interpolate_pos_encoding=interpolate_pos_encoding)
        batch, seq, hidden = x.shape
        p = packing.plan(None, batch, seq, x.device, 1, align=1)  # one SDPA call per layer, no key mask
        x = packing.pack(x, p)
        for layer in _vit_layers(self):
            a = layer.attention
            h = layer.layernorm_before(x)
            if hasattr(a, "q_proj"):  # recent transformers 5
                ctx = self.packed_attention(a.q_proj(h), a.k_proj(h), a.v_proj(h), p, a.num_attention_heads, a.scaling)
                x = a.o_proj(ctx) + x
                x = layer.mlp(layer.layernorm_after(x)) + x
            else:  # earlier: attention.attention.query/key/value, attention.output, intermediate, output
                sa = a.attention
                ctx = self.packed_attention(sa.query(h), sa.key(h), sa.value(h), p, sa.num_attention_heads,
                                            getattr(sa, "scaling", None))
                x = a.output(ctx, h) + x  # dense + dropout (its second argument is unused)
                x = layer.output(layer.intermediate(layer.layernorm_after(x)), x)  # dense, dropout, + residual
        seq_out = packing.unpack(self.layernorm(x), p)
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
