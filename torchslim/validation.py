"""Validation beyond the example: held-out inputs and other shapes, for every recipe that kept the
example's outputs.

A recipe is first judged on the example batch (search.choose.validate). Users then call the saved model
on other data and other shapes, and traced, frozen or compiled models can bake the example's shape
in. So each surviving recipe is also run on:

- held-out inputs: the last calibration batch(es), which the recipes then do not calibrate on
  (`for_recipes`), or, with fewer than two calibration batches, inputs generated like the example
  (same dtypes, floats with the example's mean/std, integers drawn from the example's values);
- batch 1 (batch 2 when the example has batch 1), when every input shares the batch dimension;
- half the sequence length, for token-id models (integer inputs sharing dimension 1).

Each check costs one baseline call (cached per workload) and one candidate call, timed: for a
compiled recipe that call is the recompilation for the new shape, recorded as `first_call_ms`.
Compiled models are checked with automatic dynamic shapes off, so the new shape gets its own static
graph and the example's graph, the one that is timed, stays as it was; a compiled recipe whose
first compile took longer than SHAPE_CHECK_BUDGET_MS runs its shape checks with compilation off
instead of paying that again (the row records the mode and the expected recompile time). A recipe with wrong outputs on held-out inputs, or that raises or drifts at another shape,
is rejected with the check named; everything is recorded in the row's `validation` field.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
import torch.nn as nn

from .errors import SlimError, first_line
from .fidelity import compare, output_tensors
from .inputs import Example

# A compiled recipe whose first call (the compile) took longer is not recompiled for other shapes
# (a recompile costs about as much): its shape checks run the same graph with compilation off
# (torch.compiler.set_stance("force_eager")): one eager call, which still catches a shape baked in
# by torch.export/PT2E or tracing before the compile; torch.compile itself guards on shapes.
SHAPE_CHECK_BUDGET_MS = 1_000.0
MAX_HELD_OUT_BATCHES = 2
_CACHE = "_torchslim_validation"


def check_baseline(ref_out, example: Example) -> None:
    """Refuse a model whose own outputs hold NaN or Inf: no recipe can be compared against them."""
    bad = [i for i, t in enumerate(output_tensors(ref_out)) if not bool(torch.isfinite(t).all())]
    if bad:
        raise SlimError(f"the model's own (FP32 baseline) outputs contain NaN or Inf on the example inputs {example.describe()} "
                        f"(output tensor(s) {bad})",
                        "check the weights (--weights) and the inputs (--input-shape/--dtype/--inputs); recipes are only compared against finite outputs")


def for_recipes(workload) -> Callable | None:
    """The calibration function the recipes get: the calibration data minus the held-out batches."""
    if workload.calibration is None:
        return None
    held, kept = _split(workload)
    if not held:
        return workload.calibration
    # One function object per workload: static INT8's calibration cache keys on its identity.
    cache = workload.__dict__[_CACHE]
    if "for_recipes" not in cache:
        cache["for_recipes"] = lambda: kept
    return cache["for_recipes"]


def _split(workload) -> tuple[list[Example], list[Example]]:
    """(held-out batches, batches kept for calibration), computed once per workload."""
    cache = workload.__dict__.setdefault(_CACHE, {})
    if cache.get("calibration") is not workload.calibration:  # set anew: forget the old split and references
        cache.clear()
        cache["calibration"] = workload.calibration
    if "split" not in cache:
        batches = list(workload.calibration()) if workload.calibration is not None else []
        n_held = min(MAX_HELD_OUT_BATCHES, len(batches) // 4 or 1) if len(batches) >= 2 else 0
        cache["split"] = (batches[len(batches) - n_held:], batches[:len(batches) - n_held]) if n_held else ([], batches)
    return cache["split"]


def _checks(workload, example: Example) -> list[tuple[str, str, Example]]:
    """(name, kind, inputs) for every check that applies; kind is 'data' or 'shape'."""
    held, _ = _split(workload)
    out = [(f"held-out calibration batch {i + 1}/{len(held)}", "data", b.to(_device(example))) for i, b in enumerate(held)]
    if not held:
        out.append(("generated inputs like the example (no held-out data: give --calib-data with 2+ batches)", "data", like(example, seed=1)))
    ts = example.tensors()
    b = example.batch_size
    if ts and all(t.dim() >= 1 and t.shape[0] == b for t in ts):
        if b > 1:
            out.append(("batch 1", "shape", example.map(lambda t: t[:1].clone())))
        else:
            # A real row beside the example where there is one: generated token rows can hold
            # [PAD] ids as real tokens, which no calibration saw (a false rejection on MiniLM).
            real = next((h for h in held if _rows_like(h, example)), None)
            second = real.map(lambda t: t[:1].to(_device(example)).clone()) if real is not None else like(example, seed=2)
            out.append(("batch 2", "shape", _cat(example, second)))
    s = ts[0].shape[1] if ts and ts[0].dim() >= 2 else 0
    if s >= 4 and all(t.dim() >= 2 and t.shape[1] == s for t in ts) and any(not t.is_floating_point() for t in ts):
        out.append((f"sequence length {s // 2}", "shape", example.map(lambda t: t[:, :s // 2].clone())))
    return out


def _device(example: Example) -> torch.device:
    ts = example.tensors()
    return ts[0].device if ts else torch.device("cpu")


def _rows_like(batch: Example, example: Example) -> bool:
    """`batch` holds rows shaped like the example's (same tensors, dtypes, sizes past the batch dim)."""
    a, b = batch.tensors(), example.tensors()
    return len(a) == len(b) and all(x.dim() >= 1 and x.shape[1:] == y.shape[1:] and x.dtype == y.dtype for x, y in zip(a, b))


def _cat(a: Example, b: Example) -> Example:
    bt = iter(b.tensors())
    return a.map(lambda t: torch.cat([t, next(bt)]))


def like(example: Example, seed: int) -> Example:
    """Inputs shaped like the example: floats with each tensor's mean and std, integers and bools
    drawn from the values the example holds (token ids stay in the vocabulary, masks stay masks)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 0:
            return t.clone()
        src = t.detach().cpu()
        if t.is_floating_point():
            x = src.float()
            std = float(x.std()) if x.numel() > 1 else 1.0
            return (torch.randn(t.shape, generator=gen) * (std or 1.0) + float(x.mean())).to(t.dtype).to(t.device)
        flat = src.flatten()
        return flat[torch.randint(0, flat.numel(), t.shape, generator=gen)].to(t.device)

    return example.map(draw)


def _reference(workload, name: str, inputs: Example):
    """The baseline's outputs on a check's inputs (the workload's own model, computed once)."""
    _split(workload)  # resets the cache when the calibration data changed
    cache = workload.__dict__[_CACHE].setdefault("ref", {})
    if name not in cache:
        with torch.no_grad():
            cache[name] = inputs(workload.model)
    return cache[name]


def _compiled(model: nn.Module) -> bool:
    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or any(
        isinstance(m, torch._dynamo.eval_frame.OptimizedModule) or type(m).__name__ == "Compiled" for m in model.modules()) \
        if isinstance(model, nn.Module) else False


def check(res, model: nn.Module, workload, example: Example, config) -> tuple[str, str]:
    """Run the checks on a recipe that passed on the example; record them in `res.validation`.
    Returns the row's (status, reason): unchanged ('ok', '') or ('rejected', why)."""
    compiled = _compiled(model)
    rows, verdict, rejected_by = [], ("ok", ""), None
    try:
        checks = _checks(workload, example)
    except Exception as e:  # noqa: BLE001 - inputs this module cannot vary: say so, keep the example's verdict
        res.validation = {"checks": [], "shapes": f"not checked: {type(e).__name__}: {first_line(e)[:200]}"}
        return verdict
    for name, kind, inputs in checks:
        row = {"check": name, "kind": kind, "inputs": inputs.describe()}
        rows.append(row)
        eager = kind == "shape" and compiled and (res.first_call_ms or 0) > SHAPE_CHECK_BUDGET_MS
        if eager:
            row["mode"] = (f"compilation off (force_eager): a real recompile for this shape would take about "
                           f"{res.first_call_ms / 1000:.0f} s, as long as the first compile")
        try:
            ref = _reference(workload, name, inputs)
        except Exception as e:  # noqa: BLE001 - the baseline itself does not take this shape
            row["result"] = f"not checked: the baseline model raised {type(e).__name__} on these inputs"
            continue
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), torch._dynamo.config.patch(automatic_dynamic_shapes=False), \
                    (torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()):
                out = inputs(model)
            row["first_call_ms"] = (time.perf_counter() - t0) * 1000
            fid = compare(ref, out)
        except Exception as e:  # noqa: BLE001 - the recipe's failure at this shape is the finding
            row["result"] = f"failed: {type(e).__name__}: {first_line(e)[:200]}"
            if verdict[0] == "ok":
                rejected_by = kind
                verdict = ("rejected", f"{name} ({inputs.describe()}) raised {type(e).__name__}: works only at the example's shape"
                           if kind == "shape" else f"{name} raised {type(e).__name__}: {first_line(e)[:200]}")
            continue
        row.update(min_cosine=fid.min_cosine, sqnr_db=fid.to_dict()["sqnr_db"], finite=fid.finite)
        if fid.exact_match is not None:
            row["exact_match"] = fid.exact_match
        bad = (not fid.finite) or fid.min_cosine < config.min_cosine or (fid.exact_match is not None and fid.exact_match < 1.0)
        row["result"] = "failed" if bad else "ok"
        if bad and verdict[0] == "ok":
            rejected_by = kind
            what = ("NaN/Inf outputs" if not fid.finite else f"{fid.exact_match:.2%} of the integer outputs match"
                    if fid.exact_match is not None else f"min cosine {fid.min_cosine:.4f} < {config.min_cosine}")
            verdict = ("rejected", f"{name}: {what}" + (" (the recipe baked the example's shape in)" if kind == "shape" else " (held-out inputs)"))
    shapes = [r for r in rows if r["kind"] == "shape"]
    support = ("example shape only" if any(r["result"].startswith("failed") for r in shapes)
               else "not checked" if shapes and all(r["result"].startswith("not checked") for r in shapes)
               else "other shapes checked" if shapes else "example shape only (inputs have no shared batch dimension)")
    res.validation = {"checks": rows, "shapes": support, "rejected_by": rejected_by}
    slow = [r for r in shapes if r.get("first_call_ms", 0) > 1000]
    if compiled and slow:
        res.notes = res.notes + [f"recompiles for each new input shape: {slow[0]['first_call_ms'] / 1000:.1f} s at {slow[0]['check']} "
                                 "(torch.compile(dynamic=True) avoids it at some speed cost)"]
    return verdict


def rejected_at_other_shape(res) -> bool:
    """True when validation rejected the row at another input shape: keeping layers in float (the
    quantization fallback) cannot fix a shape baked in by tracing or export."""
    return (res.validation or {}).get("rejected_by") == "shape"
