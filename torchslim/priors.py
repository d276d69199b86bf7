"""The order in which `optimize` tries recipes: likely winners first, read from priors.json.

The order is data (priors.json, with the BENCHMARKS.md figures it comes from), keyed by the model's
kind (conv, transformer, recurrent, other) and the CPU's tier (amx, vnni, avx512, avx2; see
device.Capabilities.tier). Under a time budget the tail of the order is what gets cut, so the
list only has to put the winners early; every recipe is still tried when time allows.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import os

import torch.nn as nn

PATH = os.path.join(os.path.dirname(__file__), "priors.json")


@functools.lru_cache(maxsize=None)
def table() -> dict:
    with open(PATH, encoding="utf-8") as f:
        return json.load(f)


def model_kind(model: nn.Module) -> str:
    """'transformer' (attention layers), 'conv' (Conv layers), 'recurrent' (LSTM/GRU/RNN) or 'other'."""
    names = [type(m).__name__ for m in model.modules()]
    if any("Attention" in n or n in ("TransformerEncoderLayer", "TransformerDecoderLayer") for n in names):
        return "transformer"
    if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules()):
        return "conv"
    if any(isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)) for m in model.modules()):
        return "recurrent"
    return "other"


def patterns(kind: str, tier: str) -> list[str]:
    by_tier = table()["kinds"].get(kind) or table()["kinds"]["other"]
    return list(by_tier.get(tier) or by_tier["default"])


def order(names: list[str], kind: str, tier: str) -> list[int]:
    """Indices of `names` in the order to try them: by the first pattern each matches, then those
    matching none in their given order, then the known-unlikely ones ("unlikely_last")."""
    first = patterns(kind, tier)
    last = table().get("unlikely_last", [])

    def rank(i: int) -> tuple[int, int, int]:
        n = names[i]
        hit = next((k for k, p in enumerate(first) if fnmatch.fnmatchcase(n, p)), None)
        if hit is not None:
            return (0, hit, i)
        late = next((k for k, p in enumerate(last) if fnmatch.fnmatchcase(n, p)), None)
        return (1, 0, i) if late is None else (2, late, i)

    return sorted(range(len(names)), key=rank)
