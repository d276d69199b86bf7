"""Calibration drift: watch a static INT8 model's activations (DriftMonitor), and refresh its
ranges from new data (recalibrate: the static recipe re-applied, saved as a new artifact)."""
from __future__ import annotations

import copy
import datetime
import math
import os
import shutil
from typing import Iterable

import torch
import torch.nn as nn

from .errors import SlimError
from .fidelity import compare
from .fileio import replace_folder, staging_folder, write_json
from .inputs import Example, as_example

SATURATION_LIMIT = 0.01  # a layer whose quantizer clamps more than 1 % of values has drifted
RANGE_LIMIT = 0.25  # ... or whose observed range moved by more than 25 % of its baseline width


# -- finding the quantizers -----------------------------------------------------------------------

def converted_graph(model: nn.Module) -> torch.fx.GraphModule:
    """The PT2E converted graph inside a static INT8 model (InferenceMode(Frozen(graph)) or the graph)."""
    m = model
    for _ in range(16):
        if isinstance(m, torch.fx.GraphModule) and _quantizers(m):
            return m
        if not isinstance(getattr(m, "inner", None), nn.Module):
            break
        m = m.inner
    if isinstance(m, torch.jit.ScriptModule):
        raise SlimError("this is a TorchScript model (static-int8-ts: eager INT8 kernels requantize inside each fused "
                        "op, so there is no float activation to watch)",
                        "for a monitored deployment choose static-int8 (PT2E): optimize --recipes static-int8; "
                        "`torchslim recalibrate` works for both")
    raise SlimError(f"the model ({type(model).__name__}) has no calibrated activation quantizers",
                    "monitor a static INT8 model: the result of a static_int8 recipe, or torchslim.load() of one")


def _quantizers(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Static per-tensor activation quantize nodes (their scale and zero point are constants)."""
    try:
        target = torch.ops.quantized_decomposed.quantize_per_tensor.default
    except (AttributeError, RuntimeError):  # never registered: no PT2E graph in this process
        return []
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target and isinstance(n.args[1], float)]


def _stat(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[min, max, values outside (low, high), values] of one activation, as float64."""
    outside = torch.logical_or(x < low, x > high).sum()
    return torch.stack([x.amin().double(), x.amax().double(), outside.double(), torch.ones((), dtype=torch.float64) * x.numel()])


def observing_copy(graph: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[dict]]:
    """A copy of the converted graph that also returns, for every activation quantizer, the
    statistics of the tensor it quantizes (see _stat): it returns (the model's output, stats
    [points, 4]). Returns (the copy, [{layers it feeds, producing op, calibrated range}])."""
    from .sensitivity import consumers

    gm = copy.deepcopy(graph)
    g = gm.graph
    points, stats = [], []
    for q in _quantizers(gm):
        x, scale, zp, qmin, qmax = q.args[:5]
        lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
        with g.inserting_before(q):  # beyond half a step outside the range, rounding clamps
            stats.append(g.call_function(_stat, (x, lo - scale / 2, hi + scale / 2)))
        points.append({"layers": sorted(consumers(q)) or ["(output)"],
                       "at": x.name if isinstance(x, torch.fx.Node) else "?", "range": [lo, hi]})
    out = next(n for n in g.nodes if n.op == "output")
    with g.inserting_before(out):
        stacked = g.call_function(torch.stack, (stats,))
    codegen = g._codegen
    if isinstance(codegen, torch.fx.graph._PyTreeCodeGen):  # torch.export's graphs: flat outputs + out_spec
        import torch.utils._pytree as pytree

        info = codegen.pytree_info
        structure = pytree.tree_unflatten([0] * info.out_spec.num_leaves, info.out_spec)
        codegen.pytree_info = info._replace(out_spec=pytree.tree_structure((structure, 0)))
        out.args = (tuple(out.args[0]) + (stacked,),)
    else:
        out.args = ((out.args[0], stacked),)
    gm.recompile()
    return gm, points


# -- the monitor ---------------------------------------------------------------------------------

class DriftMonitor(nn.Module):
    """Serve a static INT8 `model` and watch its activation ranges on one call in `every`.

    A static INT8 model clamps every activation to the range its calibration data showed; when the
    inputs drift (a brighter camera, a new text domain) values saturate and accuracy drops although
    the weights are still right. On one call in `every` an observing copy of the converted graph
    records, at each activation quantizer, the fraction of values outside the calibrated range and
    the range it sees (one fused pass: min, max, count outside, returned as an extra output); it
    answers the sampled call itself. Fashion-MNIST CNN: an observed call costs ~2-3x a plain one, so
    the mean overhead is ~2/every: ~2 % at every=100 (benchmarks/drift_overhead.py); every=0: off.

    >>> monitor = DriftMonitor(torchslim.load("out/model"), every=100, baseline=calibration_batches)
    >>> y = monitor(x)            # as the model; every 100th call is observed
    >>> monitor.report()          # per layer: saturation, observed vs baseline range, drifted?

    The observing graph is compiled like the model (compile=True): the first observed call, or
    the `baseline` run, pays for that compilation. compile=False runs it eagerly (no compilation,
    ~40x slower than the compiled model: for a few calls, not for serving).
    """

    def __init__(self, model: nn.Module, every: int = 100, baseline: Iterable | None = None, compile: bool = True,
                 saturation_limit: float = SATURATION_LIMIT, range_limit: float = RANGE_LIMIT):
        super().__init__()
        if every < 0:
            raise SlimError(f"every must be >= 0 (got {every})", "e.g. every=100 observes one call in a hundred; 0 turns it off")
        self.model = model
        self.every, self.calls = every, 0
        self.saturation_limit, self.range_limit = saturation_limit, range_limit
        observed, self._points = observing_copy(converted_graph(model))
        if compile:
            from .compiled import Frozen

            observed = Frozen(observed)
        self.__dict__["_observed"] = observed  # not a submodule: no second copy in the state dict
        self.reset()
        self._baseline = None
        if baseline is not None:
            self._baseline = self.observe(baseline)
            self.reset()

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.every and self.calls % self.every == 0:
            return self._observe_call(*args, **kwargs)
        return self.model(*args, **kwargs)

    def _observe_call(self, *args, **kwargs):
        with torch.no_grad():
            out, stats = self._observed(*args, **kwargs)
        mn, mx, outside, values = stats.cpu().T.tolist()
        for i in range(len(self._points)):
            self._acc[i][0] += 1
            self._acc[i][1] += mn[i]
            self._acc[i][2] += mx[i]
            self._acc[i][3] = min(self._acc[i][3], mn[i])
            self._acc[i][4] = max(self._acc[i][4], mx[i])
            self._acc[i][5] += outside[i]
            self._acc[i][6] += values[i]
        return out

    def observe(self, batches: Iterable) -> list[dict]:
        """Observe `batches` (and nothing else: statistics are reset first); return report rows."""
        self.reset()
        n = 0
        for b in batches:
            as_example(b)(self._observe_call)
            n += 1
        if n == 0:
            raise SlimError("no batches to observe", "give at least one batch of inputs")
        return self._layer_stats()

    def reset(self) -> None:
        """Forget what was observed (the baseline stays)."""
        # per point: calls, sum of per-call min, sum of per-call max, min, max, values outside, values
        self._acc = [[0, 0.0, 0.0, math.inf, -math.inf, 0.0, 0.0] for _ in self._points]

    def report(self) -> list[dict]:
        """Per layer: the calibrated range, the fraction of values saturated, the observed range
        (mean per-call min/max, and extremes), how far it moved from the baseline's (or from the
        calibrated range without a baseline), as a fraction of that width, and whether it drifted."""
        rows = self._layer_stats()
        base = {r["layer"]: r for r in self._baseline or []}
        for r in rows:
            b = base.get(r["layer"])
            ref = b["range"] if b else r["calibrated_range"]
            width = max(ref[1] - ref[0], 1e-12)
            r["baseline"] = {"saturated": b["saturated"], "range": b["range"]} if b else None
            r["range_moved"] = None if not r["calls"] else max(abs(r["range"][0] - ref[0]), abs(r["range"][1] - ref[1])) / width
            r["drifted"] = bool(r["calls"]) and (r["saturated"] > self.saturation_limit or r["range_moved"] > self.range_limit)
        return rows

    def drifted(self) -> list[str]:
        """Names of the layers whose inputs drifted (see report())."""
        return [r["layer"] for r in self.report() if r["drifted"]]

    def _layer_stats(self) -> list[dict]:
        """Points feeding the same layers (e.g. before and after a max-pool) are merged."""
        merged: dict[str, list[int]] = {}
        for i, p in enumerate(self._points):
            merged.setdefault(", ".join(p["layers"]), []).append(i)
        rows = []
        for layer, idx in merged.items():
            acc = [self._acc[i] for i in idx]
            calls, values = max(a[0] for a in acc), sum(a[6] for a in acc)
            rows.append({
                "layer": layer, "at": [self._points[i]["at"] for i in idx], "calls": calls,
                "calibrated_range": self._points[idx[0]]["range"],
                "saturated": sum(a[5] for a in acc) / values if values else 0.0,
                "range": [min(a[1] / a[0] for a in acc), max(a[2] / a[0] for a in acc)] if calls else None,
                "extremes": [min(a[3] for a in acc), max(a[4] for a in acc)] if calls else None,
            })
        return rows


# -- recalibration -------------------------------------------------------------------------------

def recalibrate(folder: str, data, out: str | None = None, *, evaluate=None, metric: str | None = None,
                samples: int | None = None, model: nn.Module | None = None, progress: bool = True) -> dict:
    """Re-apply the static recipe of the artifact in `folder` with new calibration inputs `data`
    (a .pt file or file.py:fn spec, or a list of batches), and save it as a new artifact `out`
    (default: FOLDER-recalibrated; may be `folder` itself), written to a temporary folder and
    renamed into place. Returns the before/after report (also saved as out/recalibration.json).

    The report compares both models with the FP32 model on the new data (SQNR, worst-row cosine,
    top-1 agreement), their saturation on it, and the task metric if `evaluate` is given (else the
    one the model's spec provides, if any)."""
    from . import artifacts
    from .calibration import from_batches, from_spec
    from .recipes import Recipe, apply
    from .techniques import Context

    manifest = artifacts.read_manifest(folder)
    recipe = Recipe.from_list(manifest["recipe"])
    static = [s for s in recipe.steps if s.needs_calibration]
    if not static:
        raise SlimError(f"'{folder}' holds a '{manifest['recipe_name']}' model, which has no calibrated ranges to refresh",
                        "recalibrate applies to static INT8 models (recipes with static_int8)")
    ex = torch.load(os.path.join(folder, "example.pt"), map_location="cpu", weights_only=True)
    example = Example(tuple(ex["args"]), ex["kwargs"])
    n = samples or max(getattr(s, "max_samples", 256) for s in static)
    if isinstance(data, str):
        batches = from_spec(data, example, n)()
    else:  # every batch given, as before: `samples` caps only the spec form
        batches = from_batches(data, example, math.inf, what="the new calibration data")()
    float_model, wl_evaluate, wl_metric = _float_model(folder, manifest, model)
    source = "the given evaluate function"
    if evaluate is None and wl_evaluate is not None:
        evaluate, metric = wl_evaluate, wl_metric
        source = f"the evaluate() of {manifest['spec']} (its own evaluation data, not the new data)"
    before = artifacts.load(folder, model=copy.deepcopy(float_model))  # the old ranges, checked against reference.pt
    ctx = Context(device=torch.device("cpu"), example=example, calibration=lambda: batches)
    after = apply(copy.deepcopy(float_model), recipe, ctx)
    out = out or folder.rstrip("/\\") + "-recalibrated"
    report = {
        "from": os.path.abspath(folder), "artifact": os.path.abspath(out), "recipe": manifest["recipe_name"],
        "data": data if isinstance(data, str) else f"{len(batches)} batches",
        "samples": sum(b.batch_size for b in batches),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metric": metric, "metric_source": source if evaluate is not None else None,
        "before": _judge(before, float_model, batches, evaluate, metric),
        "after": _judge(after, float_model, batches, evaluate, metric),
    }
    if evaluate is not None:
        with torch.no_grad():
            report["fp32_metric"] = float(evaluate(float_model)[metric])
    with torch.no_grad():
        reference = example(after)

    def write(tmp: str) -> None:
        artifacts.save(tmp, float_model, recipe, example, spec=manifest.get("spec"), source=manifest.get("source"),
                       reference_output=reference, calibration=batches, optimized=after, keep_float=True)
        write_json(os.path.join(tmp, "recalibration.json"), report)

    _save_atomically(out, write)
    return report


def _float_model(folder: str, manifest: dict, model: nn.Module | None):
    """The artifact's FP32 model (architecture from its spec or `model`, saved weights), and the
    spec's own evaluate/metric when it builds a workload that has one."""
    from .loading import load_model

    evaluate = metric = None
    has_weights = os.path.isfile(os.path.join(folder, "weights.pt"))
    if not has_weights and model is None:  # a lean engine folder (artifacts.save without keep_float)
        raise SlimError(f"'{folder}' holds no FP32 weights to recalibrate from (saved lean: its engine file loads by itself)",
                        "optimize again with --keep-float, or pass the trained FP32 model: recalibrate(folder, data, model=...)")
    if model is None:
        if not manifest.get("spec"):
            raise SlimError("this model was optimized from an in-memory module, so its architecture is not recorded",
                            "pass the architecture: recalibrate(folder, data, model=MyModel())")
        wl = load_model(manifest["spec"], trust_pickle=manifest.get("source", {}).get("format") == "pickle", need_example=False)
        model, evaluate, metric = wl.model, wl.evaluate, wl.metric
    model = copy.deepcopy(model)
    if has_weights:
        model.load_state_dict(torch.load(os.path.join(folder, "weights.pt"), map_location="cpu", weights_only=True))
    return model.eval(), evaluate, metric


def _judge(model: nn.Module, float_model: nn.Module, batches: list[Example], evaluate, metric, max_batches: int = 8) -> dict:
    """The quantized model against FP32 on the new data, its saturation there, and the metric."""
    batches = batches[:max_batches]
    with torch.no_grad():
        refs = [b(float_model) for b in batches]
        outs = [b(model) for b in batches]
    fid = compare(refs, outs)
    tops = [compare(r, o).top1_agreement for r, o in zip(refs, outs)]
    d = {"sqnr_db": fid.sqnr_db, "min_cosine": fid.min_cosine,
         "top1_agreement": None if None in tops else sum(tops) / len(tops),
         "max_saturation": None, "most_saturated_layer": None, "saturation": {}}
    try:
        layers = DriftMonitor(model, every=1, compile=False).observe(batches[:2])  # eager: no second compilation
    except SlimError as e:  # static-int8-ts: the ranges live inside TorchScript's fused INT8 ops
        d["saturation_unavailable"] = e.what
    else:
        worst = max(layers, key=lambda r: r["saturated"])
        d.update(max_saturation=worst["saturated"], most_saturated_layer=worst["layer"],
                 saturation={r["layer"]: r["saturated"] for r in layers})
    if evaluate is not None:
        with torch.no_grad():
            d["metric"] = float(evaluate(model)[metric])
    return d


def _save_atomically(out: str, write) -> None:
    """Write a whole artifact folder to a temporary folder beside `out`, then rename it into place
    (fileio.replace_folder: a reader never sees a half-written model)."""
    tmp = staging_folder(out)
    try:
        write(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
