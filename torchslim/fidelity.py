"""How close a candidate's outputs are to the baseline's: pure functions over output trees."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model output (tensor, tuple, dict, HF ModelOutput), in order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = list(out.values()) if isinstance(out, dict) else list(out.to_tuple())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in output_tensors(o)]
    return []


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 20*log10(|ref| / |ref - x|), in dB (inf if equal)."""
    ref, x = ref.double(), x.double()
    noise = torch.linalg.vector_norm(ref - x)
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(torch.linalg.vector_norm(ref) / noise))


def cosine(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double().flatten(), x.double().flatten()
    denom = torch.linalg.vector_norm(ref) * torch.linalg.vector_norm(x)
    if denom == 0:
        return 1.0 if torch.equal(ref, x) else 0.0
    return float(torch.dot(ref, x) / denom)


def min_row_cosine(ref: torch.Tensor, x: torch.Tensor) -> float:
    """The worst cosine over the batch (dimension 0): one bad sample is not averaged away."""
    if ref.dim() < 2:
        return cosine(ref, x)
    r, y = ref.double().flatten(1), x.double().flatten(1)
    num = (r * y).sum(1)
    den = torch.linalg.vector_norm(r, dim=1) * torch.linalg.vector_norm(y, dim=1)
    cos = torch.where(den > 0, num / den.clamp_min(1e-300), (r == y).all(1).double())
    return float(cos.min())


def top1_agreement(ref: torch.Tensor, x: torch.Tensor) -> float | None:
    """Fraction of rows whose argmax matches, for classifier-shaped outputs [N, C]; else None."""
    if ref.dim() != 2 or ref.shape[1] < 2:
        return None
    return float((ref.argmax(1) == x.argmax(1)).double().mean())


@dataclass
class Fidelity:
    sqnr_db: float
    cosine: float
    min_cosine: float
    max_abs_err: float
    top1_agreement: float | None
    finite: bool
    exact_match: float | None = None  # integer outputs (labels, token ids): the fraction of equal elements

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Fidelity | None:
        """The inverse of to_dict (null -> inf: SQNR of identical outputs, error of non-finite ones);
        None for a dict without `min_cosine`. Unknown keys are ignored."""
        if not isinstance(d, dict) or "min_cosine" not in d:
            return None
        num = lambda k: math.inf if d.get(k) is None else float(d[k])  # noqa: E731
        return cls(sqnr_db=num("sqnr_db"), cosine=num("cosine"), min_cosine=num("min_cosine"),
                   max_abs_err=num("max_abs_err"), top1_agreement=d.get("top1_agreement"),
                   finite=bool(d.get("finite", True)), exact_match=d.get("exact_match"))

    def __getitem__(self, key: str):
        """Dict-style reads (`fidelity["min_cosine"]`), as when RecipeResult.fidelity was a dict."""
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


def compare(ref_out: Any, out: Any) -> Fidelity:
    """Fidelity of `out` against `ref_out`, over all floating-point output tensors concatenated."""
    refs, outs = output_tensors(ref_out), output_tensors(out)
    if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        raise ValueError(f"output structure changed: {[tuple(r.shape) for r in refs]} vs {[tuple(o.shape) for o in outs]}")
    if not refs:
        return _compare_exact(ref_out, out)
    outs = [o.detach().float().cpu() for o in outs]
    refs = [r.detach().float().cpu() for r in refs]
    finite = all(bool(torch.isfinite(o).all()) for o in outs)
    flat_r = torch.cat([r.flatten() for r in refs])
    flat_o = torch.cat([o.flatten() for o in outs])
    return Fidelity(
        sqnr_db=sqnr_db(flat_r, flat_o),
        cosine=cosine(flat_r, flat_o),
        min_cosine=min(min_row_cosine(r, o) for r, o in zip(refs, outs)),
        max_abs_err=float((flat_r - flat_o).abs().max()) if finite else math.inf,
        top1_agreement=top1_agreement(refs[0], outs[0]),
        finite=finite,
    )


def _integer_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = list(out.values()) if isinstance(out, dict) else list(out.to_tuple())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _integer_tensors(o)]
    return []


def _compare_exact(ref_out: Any, out: Any) -> Fidelity:
    """Outputs with no floating-point tensor (class labels, token ids, masks): compared exactly.
    cosine and min_cosine are 1.0 when every element matches, else the fraction that does."""
    refs, outs = _integer_tensors(ref_out), _integer_tensors(out)
    if not refs:
        raise ValueError(f"the model returned no tensor to compare (got {type(ref_out).__name__})")
    if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        raise ValueError(f"output structure changed: {[tuple(r.shape) for r in refs]} vs {[tuple(o.shape) for o in outs]}")
    same = sum(int((r.cpu() == o.cpu()).sum()) for r, o in zip(refs, outs))
    total = sum(r.numel() for r in refs)
    match = same / total if total else 1.0
    err = max(float((r.cpu().double() - o.cpu().double()).abs().max()) if r.numel() else 0.0 for r, o in zip(refs, outs))
    return Fidelity(sqnr_db=math.inf if match == 1.0 else 0.0, cosine=match, min_cosine=match,
                    max_abs_err=err, top1_agreement=None, finite=True, exact_match=match)
