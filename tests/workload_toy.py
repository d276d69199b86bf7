"""A third workload type, written in one file outside the package (tests/test_workload_type.py): the
top-1 label of a small classifier. A recipe is kept when every label matches the baseline's; its
figure is labels/s. Its recipes come from a technique hook of its own (`toy_candidates`), its trials,
skip rules, failure rows, time budget, writer and progress are the shared search's
(search/loop.drive), and the surfaces find it by its task name (WorkloadType.find): nothing in
torchslim names it."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim import measure
from torchslim.recipes import Recipe, apply, hooked
from torchslim.results import RecipeResult
from torchslim.search.trial import fail
from torchslim.search.workload_type import WorkloadType
from torchslim.techniques import Context, TechniqueConfig, register

TASK = "toy-top1"


@dataclass(frozen=True)
class RoundWeightsConfig(TechniqueConfig):
    """Round every Linear weight to `bits` bits of a symmetric per-tensor grid (0: refused)."""

    name = "toy_round_weights"
    bits: int = 8

    def label(self) -> str:
        return f"round{self.bits}"

    @classmethod
    def toy_candidates(cls, device: torch.device) -> list[tuple[TechniqueConfig, ...]]:
        return [(cls(8),), (cls(1),), (cls(0),), (cls(4),)]


@register(RoundWeightsConfig)
def _round(model: nn.Module, cfg: RoundWeightsConfig, ctx: Context) -> nn.Module:
    if cfg.bits < 1:
        raise ValueError(f"bits must be >= 1, got {cfg.bits}")
    levels = 2 ** (cfg.bits - 1) - 1 or 1
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                scale = m.weight.abs().max() / levels
                m.weight.copy_(torch.round(m.weight / scale) * scale if cfg.bits > 1 else m.weight.sign() * scale)
    ctx.notes.append(f"Linear weights on a {cfg.bits}-bit grid")
    return model


@dataclass(frozen=True)
class ToyConfig:
    objective: str = "latency"
    time_budget: float | None = None
    exhaustive: bool = False
    recipes: tuple | None = None
    rounds: int = 3
    out: str | None = None
    debug: bool = False


@dataclass
class LabelRow(RecipeResult):
    agreement: float | None = None  # fraction of the baseline's top-1 labels kept
    labels_per_s: float | None = None


class TopLabel(WorkloadType):
    task = TASK
    unit = "toy recipes"
    hook = "toy_candidates"
    table_title = "Top-1 labels"

    def __init__(self, model: nn.Module, inputs: torch.Tensor):
        self.model, self.inputs = model.eval(), inputs

    def _labels(self, model) -> torch.Tensor:
        with torch.no_grad():
            return model(self.inputs).argmax(-1)

    def baseline(self, s):
        base = LabelRow(name="baseline", steps=[], status="baseline", reason="FP32 eager", agreement=1.0)
        self.ref = self._labels(self.model)
        s.run.recipes.append(base)
        s.models["baseline"] = self.model
        return base

    def candidates(self, s):
        recipes = hooked(self.hook, s.device)
        if s.explicit:
            recipes = [r for r in recipes if r.name in s.config.recipes]
        s.run.search = {"order": [r.name for r in recipes]}
        return recipes

    def row(self, recipe: Recipe, **fields) -> LabelRow:
        return LabelRow(name=recipe.name, steps=recipe.to_list(), **fields)

    def try_one(self, recipe, s):
        res, ctx = self.row(recipe), Context(device=s.device, example=None)
        try:
            model = apply(copy.deepcopy(self.model), recipe, ctx)
            res.agreement = float((self._labels(model) == self.ref).float().mean())
            res.notes = ctx.notes
        except Exception as e:  # noqa: BLE001 - a failure is a row, made where every workload's is
            return fail(res, e, ctx.notes, s.config.debug), None
        if res.agreement < 1.0:
            res.status, res.reason = "rejected", f"top-1 labels changed: {res.agreement:.0%} kept"
            return res, None
        res.reason = "every top-1 label kept"
        return res, model

    def time_survivors(self, s):
        def call(m):
            return lambda: self._labels(m)

        samples = measure.interleaved({n: call(m) for n, m in s.models.items()}, rounds=s.config.rounds, target_round_ms=5)
        by = {r.name: r for r in s.run.recipes}
        for name, xs in samples.items():
            by[name].timing = measure.summarize(xs, None, len(self.inputs))
            by[name].labels_per_s = 1000.0 * len(self.inputs) / by[name].timing.median_ms
        for name in samples:
            by[name].speedup = by["baseline"].timing.median_ms / by[name].timing.median_ms

    def choose(self, s):
        ok = [r for r in s.run.recipes if r.status == "ok" and r.timing]
        if not ok:
            return None
        best = min(ok, key=lambda r: r.timing.median_ms)
        best.status, s.run.chosen = "chosen", best.name
        if s.config.out:
            folder = os.path.join(s.config.out, "model")
            os.makedirs(folder, exist_ok=True)
            torch.save(s.models[best.name], os.path.join(folder, "model.pt"))
            with open(os.path.join(folder, "torchslim.json"), "w") as f:
                json.dump({"task": TASK, "recipe_name": best.name, "format_version": 1}, f)
            s.run.artifact = folder
        return best

    def report_files(self, run, d):
        return {"labels.txt": self.table(d) + "\n"}

    @classmethod
    def table(cls, d: dict) -> str:
        return "\n".join(f"{r['name']:<12} {r['status']:<9} agreement {r.get('agreement')}" for r in d["recipes"])

    @classmethod
    def load_saved(cls, folder: str, device: str = "cpu", verify: bool = True):
        return torch.load(os.path.join(folder, "model.pt"), weights_only=False)
