"""fast_transformer for Hugging Face BERT-family encoders (bert, roberta, xlm-roberta, camembert, electra)."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import packing
from .core import FastModule, expand_ids, hf_fallback_needed, hf_output, refuse_tracing


class FastBertModel(FastModule):
    """Packed forward of a Hugging Face BERT-family base model (bert, roberta, xlm-roberta,
    camembert, electra): same call signature and outputs as the original (see FastModule)."""

    @classmethod
    def owns(cls, m: nn.Module) -> bool:
        return hasattr(m, "embeddings")  # else a task model: its base model is inside

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, *args, return_dict=None, **kwargs):
        if args or hf_fallback_needed(self, input_ids, inputs_embeds, kwargs):
            return self.original(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, *args,
                                 return_dict=return_dict, **kwargs)
        refuse_tracing()
        batch, seq = input_ids.shape
        keep = packing.keep_from_attention_mask(attention_mask, (batch, seq), input_ids.device)
        p = packing.plan(keep, batch, seq, input_ids.device, self.max_buckets, first_position=True)
        emb = self.embeddings
        pos = self._position_ids(emb, input_ids, position_ids)
        if token_type_ids is not None:
            tt = expand_ids(token_type_ids, batch, seq)
        elif hasattr(emb, "token_type_ids"):  # the registered all-zero buffer, read the way HF does
            tt = torch.gather(emb.token_type_ids.expand(pos.shape[0], -1), 1, pos)
        else:
            tt = torch.zeros_like(input_ids)
        x = emb(input_ids=packing.pack(input_ids, p)[None], token_type_ids=packing.pack(tt, p)[None],
                position_ids=packing.pack(pos, p)[None])[0]
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, self.original.config.hidden_size))
        else:
            if getattr(self, "embeddings_project", None) is not None:
                x = self.embeddings_project(x)
            for layer in self.encoder.layer:
                x = self._layer(layer, x, p)
            seq_out = packing.unpack(x, p)
        pooler = getattr(self, "pooler", None)
        pooled = pooler(seq_out) if pooler is not None else None
        return hf_output(self, return_dict, seq_out, pooled)

    @staticmethod
    def _position_ids(emb, input_ids, position_ids):
        batch, seq = input_ids.shape
        if position_ids is not None:
            return expand_ids(position_ids, batch, seq)
        make = getattr(emb, "create_position_ids_from_input_ids", None)
        if make is not None and getattr(emb, "padding_idx", None) is not None:  # RoBERTa family
            return make(input_ids, emb.padding_idx)
        return emb.position_ids[:, :seq].expand(batch, seq)

    def _layer(self, layer, x, p):
        sa = layer.attention.self
        ctx = self.packed_attention(sa.query(x), sa.key(x), sa.value(x), p, sa.num_attention_heads, sa.scaling)
        x = layer.attention.output(ctx, x)  # dense, dropout, LayerNorm(+ residual): token-wise
        return layer.output(layer.intermediate(x), x)
