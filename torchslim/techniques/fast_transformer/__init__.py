"""fast_transformer: a BetterTransformer-style fast path. Supported encoders get a forward of our own that
runs on the real tokens only (padding packed away) with fused attention; MODEL_MAPPING lists the families."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..base import Context, TechniqueConfig, register
from ..dynamic_int8 import LinearMultiheadAttention
from .bert import FastBertModel
from .core import FastModule, has_packed_encoder, hf_model_type
from .distilbert import FastDistilBertModel
from .gpt2 import FastGPT2Model
from .mha import FastMultiheadAttention
from .torch_encoder import FastTransformerEncoder, FastTransformerEncoderLayer
from .vit import FastViTModel

__all__ = [
    "MODEL_MAPPING", "FastTransformerConfig", "FastModule", "FastBertModel", "FastDistilBertModel", "FastViTModel",
    "FastGPT2Model", "FastTransformerEncoder", "FastTransformerEncoderLayer", "FastMultiheadAttention",
    "has_packed_encoder", "model_type", "classify", "scan",
]

# Model type -> the family's replacement class (a FastModule: it says which modules it takes with
# owns() / reason()). Hugging Face keys are config.model_type; torch keys name the torch class (see model_type).
MODEL_MAPPING: dict[str, type[FastModule]] = {
    "bert": FastBertModel,  # covers all-MiniLM-L6-v2
    "roberta": FastBertModel,
    "xlm-roberta": FastBertModel,
    "camembert": FastBertModel,
    "electra": FastBertModel,
    "distilbert": FastDistilBertModel,
    "vit": FastViTModel,
    "gpt2": FastGPT2Model,  # the prompt pass; calls that want a KV cache run the original
    "nn.TransformerEncoder": FastTransformerEncoder,
    "nn.TransformerEncoderLayer": FastTransformerEncoderLayer,
    "nn.MultiheadAttention": FastMultiheadAttention,
}
# torch class -> MODEL_MAPPING key. Looked up by exact class first; then subclasses of the classes in
# SUBCLASS_KEYS match, in that order (an encoder before a layer; the family's reason() refuses a layer
# subclass whose forward may differ). Subclasses of nn.MultiheadAttention do not match.
TORCH_TYPES: dict[type, str] = {
    nn.TransformerEncoder: "nn.TransformerEncoder",
    nn.TransformerEncoderLayer: "nn.TransformerEncoderLayer",
    nn.MultiheadAttention: "nn.MultiheadAttention",
    LinearMultiheadAttention: "nn.MultiheadAttention",  # dynamic INT8's rewrite of it
}
SUBCLASS_KEYS: tuple[type, ...] = (nn.TransformerEncoder, nn.TransformerEncoderLayer)
DECODERS = (nn.TransformerDecoder, nn.TransformerDecoderLayer, nn.Transformer)  # refused, with a reason
HF_FAMILIES = tuple(k for k in MODEL_MAPPING if not k.startswith("nn."))
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
    lossy: ClassVar[bool] = False  # float: same numerics up to float rounding
    per_layer_skip: ClassVar[bool] = False
    runtime: ClassVar[str] = "torch"
    max_buckets: int = 4
    varlen: bool = True

    def __post_init__(self):
        if not isinstance(self.max_buckets, int) or isinstance(self.max_buckets, bool) or self.max_buckets < 1:
            raise ValueError(f"max_buckets must be an integer >= 1, got {self.max_buckets!r}")
        if not isinstance(self.varlen, bool):
            raise ValueError(f"varlen must be true or false, got {self.varlen!r}")

    def label(self) -> str:
        return "fast-transformer"


# ----------------------------------------------------------------------------- discovery

def model_type(m: nn.Module) -> str | None:
    """The MODEL_MAPPING key of `m` (torch class via TORCH_TYPES, else its Hugging Face model_type), or None."""
    key = TORCH_TYPES.get(type(m))
    if key is not None:
        return key
    for cls in SUBCLASS_KEYS:
        if isinstance(m, cls):
            return TORCH_TYPES[cls]
    return hf_model_type(m)


def classify(m: nn.Module) -> tuple[type[FastModule] | None, str | None, str | None]:
    """(replacement class, reason it cannot be converted, family) for one module; (None, None, None)
    when the module is not an encoder itself (keep looking inside: task heads, user wrappers)."""
    if isinstance(m, FastModule):
        return None, "already converted", "converted"
    if isinstance(m, DECODERS):
        return None, "a Transformer decoder (causal / cross attention) is not handled", type(m).__name__
    key = model_type(m)
    if key is None:
        return None, None, None
    cls = MODEL_MAPPING.get(key)
    if cls is None:
        return None, f"model_type {key!r} is not a family fast_transformer handles (it handles {', '.join(FAMILIES)})", key
    if not cls.owns(m):
        return None, None, None  # a task model: its base model is inside
    r = cls.reason(m)
    return (None, r, key) if r else (cls, None, key)


def scan(model: nn.Module):
    """Top-most convertible encoders [(name, module, class, family)] and the reasons others were left
    alone [(name, module, reason)]; a refused module's children are not searched."""
    found: list[tuple[str, nn.Module, type[FastModule], str]] = []
    skipped: list[tuple[str, nn.Module, str]] = []

    def visit(name: str, m: nn.Module):
        cls, reason, family = classify(m)
        if cls is not None:
            found.append((name, m, cls, family))
        elif reason is not None:
            skipped.append((name, m, reason))
        else:
            for child_name, child in m.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found, skipped


def _describe(name: str, m: nn.Module) -> str:
    return f"{type(m).__name__} at '{name or '(model)'}'"


# ----------------------------------------------------------------------------- the technique

# Why a forward of our own: Hugging Face dropped BetterTransformer for SDPA attention, but SDPA still computes
# every padding token, in attention and in every Linear/LayerNorm; the packed path's cost follows the real tokens.

def _applies(model, cfg: FastTransformerConfig, ctx: Context):
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript model cannot be rewritten"
    found, skipped = scan(model)
    if found:
        return None
    if skipped:
        return "; ".join(f"{_describe(n, m)}: {r}" for n, m, r in skipped[:3])
    return ("no Transformer encoder it handles (Hugging Face " + ", ".join(HF_FAMILIES)
            + "; nn.TransformerEncoder / nn.TransformerEncoderLayer / nn.MultiheadAttention with batch_first=True)")


@register(FastTransformerConfig, applies=_applies)
def apply_fast_transformer(model, cfg: FastTransformerConfig, ctx: Context):
    """Swap each top-most supported encoder for its family's FastModule; task heads around it are kept,
    and the Linear/LayerNorm modules are the original ones (so this composes with dynamic INT8 and
    BF16 casts, before or after)."""
    found, skipped = scan(model)
    done = []
    for name, m, cls, family in found:
        if name:
            model.set_submodule(name, cls(m, cfg))
        else:
            model = cls(m, cfg)
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
