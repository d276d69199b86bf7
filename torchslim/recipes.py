"""A recipe is an ordered tuple of technique configs; this file lists the ones worth trying."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from . import device as dev
from .errors import NotApplicable
from .techniques import (
    AoFloat8Config, AoInt8DynamicConfig, FastTransformerConfig, WeightOnlyConfig,
    ChannelsLastConfig, CompileConfig, Context, DynamicInt8Config, InferenceModeConfig,
    LowPrecisionConfig, Pt2eDynamicInt8Config, StaticInt8Config, StaticInt8FxConfig, StaticLinearInt8Config, TechniqueConfig, TorchScriptConfig, config_from_dict, handler,
    registered,
)


@dataclass(frozen=True)
class Recipe:
    steps: tuple[TechniqueConfig, ...] = ()

    @property
    def name(self) -> str:
        labels = [s.label() for s in self.steps if not isinstance(s, InferenceModeConfig)]
        if not labels:
            return "inference-mode" if self.steps else "baseline"
        return "+".join(labels)

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.steps]

    @classmethod
    def from_list(cls, items: list[dict]) -> "Recipe":
        return cls(tuple(config_from_dict(d) for d in items))


BASELINE = Recipe(())


def apply(model: nn.Module, recipe: Recipe, ctx: Context) -> nn.Module:
    """Apply each step in order; raise NotApplicable naming the step that does not apply."""
    for step in recipe.steps:
        h = handler(step)
        reason = h.applies(model, step, ctx)
        if reason:
            raise NotApplicable(f"{step.label()}: {reason}")
        model = h.apply(model, step, ctx)
    return model


def _im(*steps: TechniqueConfig) -> Recipe:
    return Recipe((*steps, InferenceModeConfig()))


def low_precision_dtypes(device: torch.device) -> list[str]:
    """The 16-bit types worth listing. BF16 always on CPU: where its units are missing the search
    skips it with the reason (LowPrecisionConfig.requires) unless named. On a CPU with BF16 matrix
    units, FP16 (AVX512-FP16 without AMX-FP16) is slower and less robust than BF16, so it is only
    tried where it has its own units."""
    bf16, fp16 = dev.supports_bf16(device), dev.supports_fp16(device)
    if device.type == "cpu" and bf16 and "amx_fp16" not in dev.cpu_flags():
        fp16 = False
    return [d for d, ok in (("bf16", bf16 or device.type == "cpu"), ("fp16", fp16)) if ok]


def missing_hardware(recipe: Recipe, device: torch.device) -> str | None:
    """The reason `recipe` cannot run fast here (a step's `requires` absent on `device`), or None."""
    for step in recipe.steps:
        for need in step.requirements():
            why = dev.missing_hardware(need, device)
            if why:
                return f"{step.label()}: {why}"
    return None


def ordered(recipes: list[Recipe], model: nn.Module, device: torch.device) -> list[Recipe]:
    """`recipes` with the likely winners for this kind of model on this hardware first (priors.json)."""
    from . import priors

    tier = "cuda" if device.type == "cuda" else dev.capabilities(device).tier()
    idx = priors.order([r.name for r in recipes], priors.model_kind(model), tier)
    return [recipes[i] for i in idx]


def candidates(device: torch.device) -> list[Recipe]:
    """Every recipe worth trying on `device`, cheapest to prepare first. Inapplicable ones are
    filtered later by each technique's own `applies` check, with the reason recorded."""
    cl, comp = ChannelsLastConfig(), CompileConfig()
    lows = low_precision_dtypes(device)
    out = [_im(), _im(cl)]
    for d in lows:
        out += [_im(LowPrecisionConfig(d, "autocast")), _im(LowPrecisionConfig(d, "cast")), _im(cl, LowPrecisionConfig(d, "cast"))]
    if device.type == "cpu":
        # PT2E first: preparing a PT2E model is kept ahead of the other compiled recipes.
        out += [_im(StaticInt8Config()), _im(Pt2eDynamicInt8Config()), _im(DynamicInt8Config())]
        # The same INT8 math on eager kernels, TorchScript-frozen: wins where per-op overhead rules.
        # Frozen TorchScript records no autograd (int8 weights are constants): no inference_mode wrapper.
        out += [Recipe((StaticInt8FxConfig(),))]
        if "x86" in torch.backends.quantized.supported_engines:
            # Linears on fbgemm and the graph on Static Runtime: less per-op cost (the batch-1 win).
            out += [Recipe((StaticInt8FxConfig(engine="x86", static_runtime=True),))]
    # BetterTransformer-style packing: applies to Transformer encoders only (refuses the rest).
    ft = FastTransformerConfig()
    out += [_im(ft)] + [_im(ft, LowPrecisionConfig(d, "cast")) for d in lows]
    if device.type == "cpu":
        out += [_im(ft, DynamicInt8Config()), _im(ft, StaticLinearInt8Config())]
    out += [Recipe((TorchScriptConfig(),)), _im(comp), _im(cl, comp)]
    for d in lows:
        out += [_im(LowPrecisionConfig(d, "cast"), comp), _im(cl, LowPrecisionConfig(d, "cast"), comp)]
    # torchao: INT8 dynamic pays off only compiled; weight-only INT8 needs fast BF16 activations;
    # INT4 weight-only is for small batches on large Linears.
    out += [_im(AoInt8DynamicConfig(), comp)]
    if device.type == "cuda":
        # CUDA graphs: one launch per call instead of one per kernel (the batch-1 win on GPUs)
        out += [_im(LowPrecisionConfig(d, "cast"), CompileConfig(mode="reduce-overhead")) for d in lows]
        from .techniques.ao_float8 import fp8_missing

        if fp8_missing(device) is None:
            out += [_im(AoFloat8Config(), comp)]
    if "bf16" in lows:
        out += [_im(WeightOnlyConfig(bits=8), comp)]
    out += [_im(WeightOnlyConfig(bits=4, group_size=128))]
    # The techniques' own recipes (engines: techniques/aoti.py, ort.py, openvino.py; plugins)
    seen = {r.name for r in out}
    for r in contributed(device):
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out


def hooked(hook: str, device: torch.device, *args) -> list[Recipe]:
    """The recipes registered techniques add through the classmethod `hook(device, *args)`, a
    workload type's own list (WorkloadType.hook; e.g. `generation_candidates`), in registration
    order, the first of each name kept, steps as given."""
    out, seen = [], set()
    for cls in registered():
        for steps in getattr(cls, hook, lambda *a: [])(device, *args):
            r = Recipe(tuple(steps))
            if r.name not in seen:
                seen.add(r.name)
                out.append(r)
    return out


def contributed(device: torch.device) -> list[Recipe]:
    """The recipes registered techniques add through their `candidates(device)` hook, in registration
    order. Each is wrapped in inference mode as the built-ins are, unless its steps already hold it
    or a step's result runs outside eager torch (`runtime` other than "torch": nothing records autograd)."""
    out = []
    for cls in registered():
        for steps in cls.candidates(device):
            steps = tuple(steps)
            eager = all(s.runtime == "torch" for s in steps)
            out.append(_im(*steps) if eager and not any(isinstance(s, InferenceModeConfig) for s in steps) else Recipe(steps))
    return out


def by_name(names: list, device: torch.device) -> list[Recipe]:
    """Pick candidate recipes by name ('compile', 'bf16-cast+compile', ...); a Recipe given
    instead of a name (Python API) is taken as it is."""
    known = {r.name: r for r in candidates(device)}
    missing = [n for n in names if not isinstance(n, Recipe) and n not in known]
    if missing:
        raise NotApplicable(f"unknown or unavailable recipe(s) {missing}", f"available here: {', '.join(known)}")
    return [n if isinstance(n, Recipe) else known[n] for n in names]
