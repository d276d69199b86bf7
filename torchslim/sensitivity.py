"""Per-layer quantization sensitivity (each layer quantized alone, ranked by output SQNR), and the
fewest layers to keep in float for a recipe to pass."""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .errors import NotApplicable, SlimError, first_line
from .progress import bar as progress_bar
from .fidelity import compare
from .inputs import Example, as_example
from .quant.probes import Pt2eFakeQuant, is_observer
from .quant.pt2e import weighted_layer
from .techniques import Context, TechniqueConfig, handler
from .techniques.base import with_per_layer_skip
from .techniques.static_int8 import Pt2eDynamicInt8Config, StaticInt8Config, prepare_calibrated
from .techniques.static_int8_fx import StaticInt8FxConfig
from .workload import Workload, eval_mode


def skip_techniques() -> str:
    """The registered techniques that can keep named layers in float (per_layer_skip), comma-separated."""
    return ", ".join(sorted(with_per_layer_skip()))


@dataclass(frozen=True)
class SensitivityConfig:
    technique: TechniqueConfig = StaticInt8Config()  # the quantization whose per-layer damage is measured
    metric: bool = True  # also score the task metric per layer (one evaluate() per layer)
    batches: int = 4  # batches for the output SQNR: the example, then calibration batches

    def __post_init__(self):
        if not has_skip(self.technique):
            raise SlimError(f"'{self.technique.label()}' cannot keep single layers in float (it has no skip option)",
                            f"measure one of: {skip_techniques()}")
        if self.batches < 1:
            raise SlimError("batches must be >= 1", "e.g. 4: the example and three calibration batches")


def has_skip(cfg: TechniqueConfig) -> bool:
    """True for a config that can keep named layers in float (its `skip` patterns)."""
    return cfg.per_layer_skip


def quantization_step(steps: Iterable[TechniqueConfig]) -> int | None:
    """Index of the first step that can keep layers in float by name (has `skip`), or None."""
    return next((i for i, s in enumerate(steps) if has_skip(s)), None)


def with_float_layers(cfg: TechniqueConfig, names: Iterable[str]) -> TechniqueConfig:
    """`cfg` with the module `names` added to its skip patterns (exact names are fnmatch patterns too)."""
    skip = tuple(cfg.skip) + tuple(n for n in names if n not in cfg.skip)
    return dataclasses.replace(cfg, skip=skip)


# -- probes: the model with any subset of its layers quantized ------------------------------------
# Quantizing one layer at a time through the real flow costs one PT2E export, prepare and
# calibration per layer. Instead the model is prepared and calibrated once; every observer is replaced
# by the quantize->dequantize that convert_pt2e would put in its place (quant.probes.Pt2eFakeQuant,
# same scales, same rounding), and each is attributed to the Conv/Linear layer it serves: the layer's
# weight, its input, or, through ops that pass int8 on (pooling, flatten, ...), the input of the next
# layer(s). "Only L quantized" is that graph with only L's switches on; "all but S in float" is every
# switch on except those of S. With every switch on it is the converted reference model (SQNR > 50 dB
# against the real oneDNN INT8 model on the Fashion-MNIST CNN). It stays a prediction: the fallback in
# optimize.py re-applies the real recipe with skip=(...) and validates that, so a wrong prediction
# costs a retry, never a wrong result. Techniques without observers (torchao's ao_int8_dynamic and
# weight_only) use the plain method: a copy of the model quantized with every other layer in skip.

class Pt2eProbe:
    """The PT2E-prepared graph with switchable fake-quantizers (see the module docstring)."""

    method = "pt2e fake-quant switches (prepared and calibrated once)"

    def __init__(self, model: nn.Module, cfg, ctx: Context):
        dynamic = isinstance(cfg, Pt2eDynamicInt8Config)
        self.graph, _, self.calibration, _ = prepare_calibrated(model, cfg, ctx, is_dynamic=dynamic)
        self.switches, self.layers = _install_switches(self.graph)

    def model(self, quantized: Iterable[str]) -> nn.Module:
        q = set(quantized)
        for fq, owners in self.switches:
            fq.enabled = owners <= q
        return self.graph


class SkipProbe:
    """A fresh copy of the model quantized with every layer outside `quantized` in skip."""

    method = "one quantized copy per probe (skip=every other layer)"

    def __init__(self, model: nn.Module, cfg, ctx: Context):
        self.base, self.cfg, self.ctx = model, cfg, ctx
        probe_ctx = dataclasses.replace(ctx, notes=[], details={})
        handler(cfg).apply(copy.deepcopy(model), cfg, probe_ctx)
        quantized = probe_ctx.details.get(cfg.name, {}).get("quantized", [])
        kinds = dict(model.named_modules())
        self.layers = {n: type(kinds[n]).__name__ if n in kinds else "Linear" for n in quantized}

    def model(self, quantized: Iterable[str]) -> nn.Module:
        others = [n for n in self.layers if n not in set(quantized)]
        cfg = with_float_layers(self.cfg, others)
        ctx = dataclasses.replace(self.ctx, notes=[], details={})
        return handler(cfg).apply(copy.deepcopy(self.base), cfg, ctx)


def reuses_calibration(cfg: TechniqueConfig) -> bool:
    """True where the probe is one prepared-and-calibrated PT2E graph (cheap to rank, and it reuses
    the search's calibration: static_int8.calibration_cache); False where ranking needs one
    quantized copy of the model per layer (SkipProbe)."""
    return isinstance(cfg, (StaticInt8Config, Pt2eDynamicInt8Config, StaticInt8FxConfig))


def make_probe(model: nn.Module, cfg: TechniqueConfig, ctx: Context):
    """A probe for `cfg` on (a copy of) `model`. Raises SlimError/NotApplicable with the reason."""
    if not has_skip(cfg):
        raise SlimError(f"'{cfg.label()}' cannot keep single layers in float", f"use one of: {skip_techniques()}")
    reason = handler(cfg).applies(model, cfg, ctx)
    if reason:
        raise NotApplicable(f"{cfg.label()}: {reason}")
    model = eval_mode(copy.deepcopy(model))
    if isinstance(cfg, StaticInt8FxConfig):
        # The same quantization math (int8 per-channel weights, uint8 calibrated activations, same
        # observer) simulated on the PT2E graph: one calibration ranks every layer.
        cfg = cfg.pt2e()
    probe = Pt2eProbe(model, cfg, ctx) if type(cfg) in (StaticInt8Config, Pt2eDynamicInt8Config) else SkipProbe(model, cfg, ctx)
    if not probe.layers:
        raise SlimError(f"{cfg.label()} quantizes no layer of this model", "there is nothing to rank: every Conv/Linear is kept in float")
    return probe


def _install_switches(gm: torch.fx.GraphModule):
    """Replace each observer edge (observer -> user) by its own Pt2eFakeQuant; return
    [(fake-quant, names of the layers it belongs to)] and {layer name: layer type}."""
    switches, layers = [], {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not is_observer(gm.get_submodule(node.target)):
            continue
        observer = gm.get_submodule(node.target)
        for user in list(node.users):
            owners, is_weight = _owners(node, user)
            fq = Pt2eFakeQuant(observer)
            name = f"_slim_fq_{len(switches)}"
            gm.add_submodule(name, fq)
            with gm.graph.inserting_before(user):
                new = gm.graph.call_module(name, (node.args[0],))
            user.replace_input_with(node, new)
            switches.append((fq, owners))
            if is_weight:
                layers[next(iter(owners))] = weighted_layer(user)[1]
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()
    # A switch whose layers are not all quantizable (their weights stay float) never turns on.
    switches = [(fq, owners) for fq, owners in switches if owners and owners <= set(layers)]
    return switches, layers


def _owners(obs: torch.fx.Node, user: torch.fx.Node) -> tuple[frozenset[str], bool]:
    """The layer(s) an observed edge belongs to, and whether it is that layer's weight."""
    wl = weighted_layer(user)
    if wl is not None:
        return frozenset([wl[0]]), user.args[1] is obs
    return consumers(user), False


def consumers(node: torch.fx.Node) -> frozenset[str]:
    """The Conv/Linear layers that `node`'s value reaches, through ops that are not layers (pooling,
    flatten, quantize/dequantize, ...): the layers whose input a quantizer at `node` serves."""
    found, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for u in n.users:
            wl = weighted_layer(u)
            if wl is not None:
                found.add(wl[0])
            else:
                stack.append(u)
    return frozenset(found)


# -- scoring ----------------------------------------------------------------------------------

def score(model: nn.Module, batches: list[Example], refs: list, evaluate=None, metric: str | None = None,
          base_metric: float | None = None) -> dict:
    """Output SQNR / min cosine against the float outputs `refs`, and the task metric if asked."""
    with torch.no_grad():
        outs = [b(model) for b in batches]
    fid = compare(refs, outs)
    d = {"sqnr_db": fid.sqnr_db, "min_cosine": fid.min_cosine, "finite": fid.finite}
    if evaluate is not None:
        with torch.no_grad():
            value = float(evaluate(model)[metric])
        d.update(metric=value, metric_drop=None if base_metric is None else base_metric - value)
    return d


def measure_layers(probe, batches: list[Example], refs: list, evaluate=None, metric: str | None = None,
                   base_metric: float | None = None, progress: bool = False) -> list[dict]:
    """Each layer quantized alone: its scores, most damaging (lowest SQNR) first."""
    rows = []
    with progress_bar(len(probe.layers), "layers", "layer", progress) as bar:
        for name in list(probe.layers):
            s = score(probe.model([name]), batches, refs, evaluate, metric, base_metric)
            rows.append({"name": name, "kind": probe.layers[name], **s})
            bar.update()
    rows.sort(key=lambda r: (_sort_db(r["sqnr_db"]), r["min_cosine"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _sort_db(x: float) -> float:
    return math.inf if x is None or math.isnan(x) else x


def fewest_float_layers(probe, order: list[str], passes: Callable[[nn.Module], tuple[bool, dict]],
                        max_layers: int) -> tuple[list[str] | None, list[dict]]:
    """The shortest prefix of `order` (most sensitive first) that, kept in float, makes `passes`
    true on the probe: bisection on the prefix length, 1 + log2(max_layers) trials (it assumes
    that keeping more layers in float does not make things worse, which holds as a rule).
    Returns (the layers, or None if even `max_layers` of them are not enough; the trials)."""
    trials: list[dict] = []
    everything = list(probe.layers)

    def trial(k: int) -> bool:
        floats = order[:k]
        ok, info = passes(probe.model([n for n in everything if n not in floats]))
        trials.append({"float_layers": floats, "passes": ok, **info})
        return ok

    hi = min(max_layers, len(order))
    if hi < 1 or not trial(hi):
        return None, trials
    lo = 0  # nothing in float: the recipe as it was, known to fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(mid):
            hi = mid
        else:
            lo = mid
    return order[:hi], trials


# -- the verb -----------------------------------------------------------------------------------

def sensitivity(workload: Workload, config: SensitivityConfig = SensitivityConfig(), progress: bool = True) -> dict:
    """Rank the layers of `workload.model` by the damage quantizing each one alone does.

    Returns a JSON-ready dict: the technique, the method, the scores with every layer quantized,
    and one row per layer (name, kind, sqnr_db, min_cosine, metric, metric_drop, rank).
    """
    t0 = time.perf_counter()
    device = torch.device("cpu")
    model = eval_mode(workload.model.to(device))
    example = workload.example.to(device)
    ctx = Context(device=device, example=example, calibration=workload.calibration)
    batches = [example] + _calibration_batches(workload, config.batches - 1, device)
    with torch.no_grad():
        try:
            refs = [b(model) for b in batches]
        except Exception as e:  # noqa: BLE001 - the user's model or inputs
            raise SlimError(f"the model raised {type(e).__name__} on its inputs: {first_line(e)}",
                            "check the example/calibration inputs match what the model expects") from e
    probe = make_probe(model, config.technique, ctx)
    evaluate = workload.evaluate if config.metric else None
    base_metric = None
    if evaluate is not None:
        with torch.no_grad():
            base_metric = float(workload.evaluate(model)[workload.metric])
    everything = score(probe.model(probe.layers), batches, refs, evaluate, workload.metric, base_metric)
    rows = measure_layers(probe, batches, refs, evaluate, workload.metric, base_metric, progress)
    return {
        "workload": workload.name, "technique": config.technique.to_dict(), "label": config.technique.label(),
        "method": probe.method, "ranked_by": "output SQNR with the layer alone quantized (lowest first)",
        "metric": workload.metric if evaluate else None, "metric_unit": workload.metric_unit,
        "baseline_metric": base_metric, "batches": len(batches), "samples": sum(b.batch_size for b in batches),
        "all_quantized": everything, "layers": rows, "seconds": time.perf_counter() - t0,
    }


def _calibration_batches(workload: Workload, n: int, device: torch.device) -> list[Example]:
    if n <= 0 or workload.calibration is None:
        return []
    out = []
    for b in workload.calibration():
        if len(out) >= n:
            break
        out.append(as_example(b).to(device))
    return out
