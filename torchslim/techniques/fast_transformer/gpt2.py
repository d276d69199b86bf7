"""fast_transformer for Hugging Face GPT-2's prompt pass: packed, causal attention within each sequence."""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from . import packing
from .core import FastModule, expand_ids, hf_fallback_needed, refuse_tracing


class FastGPT2Model(FastModule):
    """Packed forward of a Hugging Face GPT2Model for the prompt pass (no KV cache): causal attention
    within each sequence over its real tokens, padding skipped. Position ids are the original's
    (by default 0..seq-1 over the padded row, as transformers does), so left and right padding keep
    their meaning; real-token outputs equal the original's, padding positions are zero. Calls that
    ask for a cache (use_cache=True, a cache passed in: generate() does both) fall back to the
    original, as do training mode, inputs_embeds, cross-attention and output_attentions/hidden_states."""

    def __init__(self, original, cfg):
        super().__init__(original, cfg)
        object.__setattr__(self, "_signature", inspect.signature(original.forward))

    @classmethod
    def owns(cls, m: nn.Module) -> bool:
        return hasattr(m, "wte")  # else a task model: its base model is inside

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
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

    def forward(self, *args, **kwargs):
        call = self._packed_call(args, kwargs)
        if call is None:
            return self.original(*args, **kwargs)
        refuse_tracing()
        input_ids, mask, position_ids, token_type_ids, return_dict = call
        batch, seq = input_ids.shape
        keep = packing.keep_from_attention_mask(mask, (batch, seq), input_ids.device)
        p = packing.plan(keep, batch, seq, input_ids.device, self.max_buckets)
        pos = (expand_ids(position_ids, batch, seq) if position_ids is not None
               else torch.arange(seq, device=input_ids.device).expand(batch, seq))
        x = self.wte(packing.pack(input_ids, p)) + self.wpe(packing.pack(pos, p))
        if token_type_ids is not None:
            x = x + self.wte(packing.pack(expand_ids(token_type_ids, batch, seq), p))
        x = self.drop(x)
        if p.total == 0:
            seq_out = x.new_zeros((batch, seq, x.shape[-1]))
        else:
            for block in self.h:
                a = block.attn
                ctx = self.packed_attention(a.c_attn(block.ln_1(x)), None, None, p, a.num_heads, _gpt2_scaling(a),
                                            causal=True)
                x = x + a.c_proj(ctx)
                x = x + block.mlp(block.ln_2(x))
            seq_out = packing.unpack(self.ln_f(x), p)
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
        if named.pop("use_cache", None) or hf_fallback_needed(self, picked[0], None, named):
            return None
        return picked


def _gpt2_scaling(a: nn.Module) -> float:
    """GPT2Attention's score scale: its `scaling` (recent transformers), else derived as it was."""
    s = getattr(a, "scaling", None)
    if s is not None:
        return s
    s = a.head_dim ** -0.5 if a.scale_attn_weights else 1.0
    return s / float(a.layer_idx + 1) if a.scale_attn_by_inverse_layer_idx else s
