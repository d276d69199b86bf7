"""The technique registry: a frozen config dataclass per technique (with what the search needs to
know about it), and a handler `apply`/`applies` registered for it. A technique is one file."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn as nn

from ..compiled import Wrapper  # noqa: F401 - the techniques' wrappers subclass it
from ..errors import SlimError
from ..inputs import Example


@dataclass(frozen=True)
class TaskMetric:
    """The workload's primary task metric, for a technique that tunes itself against it (NNCF's
    accuracy control): `evaluate(model)` -> the metric (higher is better), and the drop allowed."""

    evaluate: Callable[[nn.Module], float]
    max_drop: float


@dataclass
class Context:
    """What a handler may look at: the device, the example inputs, calibration data, and a place for notes."""

    device: torch.device
    example: Example
    notes: list[str] = field(default_factory=list)
    calibration: Callable[[], Iterable[Example]] | None = None  # see Workload.calibration
    details: dict = field(default_factory=dict)  # structured facts a technique reports (layers kept in float, ...)
    task: TaskMetric | None = None  # set by the search where the workload has a task metric


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique's config. Subclasses are frozen dataclasses that validate themselves."""

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False  # True: apply() reads ctx.calibration (static quantization)
    # Hardware the technique needs to pay off (keys of device.REQUIREMENTS); "{field}" is filled in
    # from the config, e.g. ("native_{dtype}",). The search skips a recipe whose hardware is absent
    # (with the reason) unless the user names it; see requirements().
    requires: ClassVar[tuple[str, ...]] = ()
    lossy: ClassVar[bool] = False  # changes numerics beyond float rounding (quantization, 16-bit types)
    # The config has a `skip` field whose fnmatch patterns keep named layers in float (the
    # sensitivity analysis and the search's float fallback use it).
    per_layer_skip: ClassVar[bool] = False
    # INT8 that keeps the layers that break fidelity in float by itself (NNCF's ignored scope and
    # overflow fix, its accuracy control): worth trying when a plain INT8 recipe was fast but rejected
    # (search/gain.py ranks it by that recipe's measured speedup).
    accuracy_aware: ClassVar[bool] = False
    speeds_up: ClassVar[str] = ""  # generation recipes: "prefill", "decode" or "both" ("": not declared)
    runtime: ClassVar[str] = "torch"  # who runs the result: torch, torchscript, aoti, onnxruntime, openvino

    @classmethod
    def candidates(cls, device: torch.device) -> list[tuple["TechniqueConfig", ...]]:
        """Recipes (tuples of steps) this technique adds to the search on `device`, besides the
        built-in list in recipes.py. Steps are wrapped in inference mode unless they say otherwise
        (recipes.contributed)."""
        return []

    def requirements(self) -> tuple[str, ...]:
        """`requires` with this config's field values filled in."""
        values = dataclasses.asdict(self)
        return tuple(r.format(**values) for r in self.requires)

    def to_dict(self) -> dict[str, Any]:
        return {"technique": self.name, **dataclasses.asdict(self)}

    def label(self) -> str:
        """A short human name, e.g. 'bf16-cast'."""
        return self.name


@dataclass(frozen=True)
class Handler:
    apply: Callable[[nn.Module, TechniqueConfig, Context], nn.Module]
    applies: Callable[[nn.Module, TechniqueConfig, Context], str | None]


CONFIGS: dict[str, type[TechniqueConfig]] = {}
HANDLERS: dict[type[TechniqueConfig], Handler] = {}


def register(config_cls: type[TechniqueConfig], applies: Callable[..., str | None] | None = None):
    """Decorator: register `fn(model, cfg, ctx) -> model` as the handler of `config_cls`."""

    def deco(fn):
        CONFIGS[config_cls.name] = config_cls
        HANDLERS[config_cls] = Handler(apply=fn, applies=applies or (lambda m, c, x: None))
        return fn

    return deco


def registered() -> list[type[TechniqueConfig]]:
    """Every registered config class, in registration order."""
    return list(CONFIGS.values())


def with_per_layer_skip() -> list[str]:
    """Names of the techniques that can keep single layers in float (`per_layer_skip`)."""
    return [name for name, cls in CONFIGS.items() if cls.per_layer_skip]


def unregister(config_cls: type[TechniqueConfig]) -> None:
    """Remove a registered technique (tests that register one of their own clean up with it)."""
    if CONFIGS.get(config_cls.name) is config_cls:
        del CONFIGS[config_cls.name]
    HANDLERS.pop(config_cls, None)


def config_from_dict(d: dict[str, Any]) -> TechniqueConfig:
    d = dict(d)
    name = d.pop("technique", None)
    if name not in CONFIGS:
        raise SlimError(f"unknown technique '{name}'", f"known techniques: {', '.join(sorted(CONFIGS))}")
    cls = CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise SlimError(f"technique '{name}' has no option(s) {sorted(unknown)}", f"its options: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def handler(cfg: TechniqueConfig) -> Handler:
    """The registered handler of `cfg`'s technique."""
    return HANDLERS[type(cfg)]


def has_module(model: nn.Module, *types: type) -> bool:
    return any(isinstance(m, types) for m in model.modules())
