"""fast_transformer for Hugging Face DistilBERT."""
from __future__ import annotations

import torch.nn as nn

from . import packing
from .core import FastModule, expand_ids, hf_fallback_needed, hf_output, refuse_tracing


class FastDistilBertModel(FastModule):
    """Packed forward of a Hugging Face DistilBertModel."""

    @classmethod
    def owns(cls, m: nn.Module) -> bool:
        return hasattr(m, "embeddings")  # else a task model: its base model is inside

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
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

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, *args,
                return_dict=None, **kwargs):
        if args or hf_fallback_needed(self, input_ids, inputs_embeds, kwargs):
            return self.original(input_ids, attention_mask, inputs_embeds, position_ids, *args,
                                 return_dict=return_dict, **kwargs)
        refuse_tracing()
        batch, seq = input_ids.shape
        keep = packing.keep_from_attention_mask(attention_mask, (batch, seq), input_ids.device)
        p = packing.plan(keep, batch, seq, input_ids.device, self.max_buckets, first_position=True)
        emb = self.embeddings
        pos = expand_ids(position_ids, batch, seq) if position_ids is not None else emb.position_ids[:, :seq].expand(batch, seq)
        x = emb(packing.pack(input_ids, p)[None], None, packing.pack(pos, p)[None])[0]
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, x.shape[-1]))
        else:
            for layer in self.transformer.layer:
                a = layer.attention
                ctx = self.packed_attention(a.q_lin(x), a.k_lin(x), a.v_lin(x), p, a.n_heads, a.scaling)
                h = layer.sa_layer_norm(a.out_lin(ctx) + x)
                x = layer.output_layer_norm(layer.ffn.ff_chunk(h) + h)
            seq_out = packing.unpack(x, p)
        return hf_output(self, return_dict, seq_out, None)
