"""The base of every family's replacement module, and the helpers the Hugging Face families share."""
from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import SlimError
from .attention import attention, varlen_available
from .packing import Packing


def refuse_tracing() -> None:
    """Raise SlimError under TorchScript tracing: the packed path depends on the mask's values."""
    if torch.jit.is_tracing():
        raise SlimError("fast_transformer's packed path depends on the attention mask's values and cannot be traced",
                        "apply TorchScript without fast_transformer, or use torch.compile")


class FastModule(nn.Module):
    """Base of the replacements: registers the original module's children under the same names
    (same parameters, same state-dict keys) and keeps the original, unregistered, to fall back on.

    Semantics shared by the families (tested): outputs equal the original's (FP32: within 1e-4) at
    every real-token position, for right, left and ragged padding; padding positions are zero (the
    Hugging Face encoders compute position 0 as the original does, see packing.plan's first_position);
    a row with no real token gives zeros; calls the packed path does not cover run the original.

    A family subclass also says, as classmethods, whether it takes a module (`owns`, `reason`):
    discovery finds the family by MODEL_MAPPING and asks these two."""

    def __init__(self, original: nn.Module, cfg):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_original", original)  # dynamic_int8 reads __dict__["_original"] too
        self.max_buckets = cfg.max_buckets
        self.use_varlen = cfg.varlen
        self.training = original.training

    @classmethod
    def owns(cls, m: nn.Module) -> bool:
        """True if `m` is the module this class replaces; False if it only wraps it (a Hugging Face
        task model of the family: keep looking inside for its base model)."""
        return True

    @classmethod
    def reason(cls, m: nn.Module) -> str | None:
        """Why `m` (of this family) cannot be converted, or None if it can."""
        raise NotImplementedError(f"{cls.__name__} does not say which modules it takes")

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

    def packed_attention(self, q, k, v, p: Packing, heads: int, scale: float | None,
                         causal: bool = False) -> torch.Tensor:
        """Packed attention (k is None: q is the fused q|k|v), CUDA varlen where enabled and available."""
        width = q.shape[-1] if k is not None else q.shape[-1] // 3
        varlen = self.use_varlen and varlen_available(q, width // heads, causal)
        return attention(q, k, v, p, heads, scale, varlen=varlen, causal=causal)

    def extra_repr(self) -> str:
        return f"fast path for {type(self.original).__name__}, max_buckets={self.max_buckets}"


def has_packed_encoder(model: nn.Module) -> bool:
    """True if fast_transformer replaced an encoder inside `model` (for other techniques' applies():
    TorchScript tracing cannot capture the packed path; torch.compile wants dynamic=True)."""
    return isinstance(model, nn.Module) and any(isinstance(m, FastModule) for m in model.modules())


# ----------------------------------------------------------------------------- Hugging Face helpers

def hf_model_type(m: nn.Module) -> str | None:
    """The model_type of a Hugging Face PreTrainedModel (base model or task model), else None."""
    cfg = getattr(m, "config", None)
    mt = getattr(cfg, "model_type", None)
    return mt if isinstance(mt, str) and hasattr(m, "base_model_prefix") else None


def hf_fallback_needed(module: FastModule, input_ids, inputs_embeds, kwargs: dict) -> bool:
    """True if the original must handle this call: no 2-D input_ids, inputs_embeds, or hf_extras_needed."""
    if input_ids is None or inputs_embeds is not None or input_ids.dim() != 2:
        return True
    return hf_extras_needed(module, kwargs)


def hf_extras_needed(module: FastModule, kwargs: dict) -> bool:
    """Training mode, attentions / hidden states asked for (by the config or a call argument), or
    any other optional argument set: the original handles those."""
    if module.training:
        return True
    cfg = getattr(module.original, "config", None)
    if getattr(cfg, "output_attentions", False) or getattr(cfg, "output_hidden_states", False):
        return True
    return any(v is not None and v is not False for v in kwargs.values())


def hf_output(module: FastModule, return_dict, seq: torch.Tensor, pooled: torch.Tensor | None):
    """The original's output type: a tuple, BaseModelOutput, or one with a pooler_output."""
    from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPoolingAndCrossAttentions

    if return_dict is None:
        return_dict = getattr(module.original.config, "return_dict", True)
    if not return_dict:
        return (seq,) if pooled is None else (seq, pooled)
    if not hasattr(module.original, "pooler"):
        return BaseModelOutput(last_hidden_state=seq)
    return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=seq, pooler_output=pooled)


def expand_ids(t: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Position / token-type ids given as [seq] or [1, seq] expanded to [batch, seq]."""
    if t.dim() == 1:
        t = t[None]
    return t.expand(batch, seq)
