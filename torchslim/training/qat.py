"""Quantization-aware training with static_int8's PTQ scheme, ending on the same INT8 kernels:
PTQ baseline, QAT from PTQ's ranges, conversion (see fit_qat)."""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import SlimError, first_line
from ..inputs import Example
from ..quant import needs_reduce_range, pt2e, qat, quiet
from .data import check_fits, take
from .distributed import current as current_world
from .loop import Hooks, LossFn, TrainConfig, TrainResult, accuracy, fit


@dataclass(frozen=True)
class QatConfig:
    # 2..8. Below 8: int8 values restricted to [-2^(b-1), 2^(b-1)-1]; the same INT8 kernels run them, so
    # they cost accuracy without saving size or time. They make PTQ lose accuracy: where QAT earns its keep.
    weight_bits: int = 8
    distill: float = 0.0  # weight of the KL term to the FP32 model's logits (0: cross-entropy only)
    temperature: float = 2.0  # distillation softmax temperature
    freeze_bn_after: int | None = None  # steps; None: after 60 % of the steps
    freeze_observers_after: int | None = None  # steps; None: after 80 % of the steps; 0: keep every PTQ scale
    # False: activation scales stay at PTQ's histogram-calibrated values and only weight scales follow
    # the weights (better in trials: 3-bit weights, 150 steps: 91.70 % vs 91.52 % with moving min/max).
    observe_activations: bool = False
    calib_samples: int = 256  # PTQ calibration samples (also QAT's starting ranges)
    lower: bool = True  # compile the result with Inductor (INT8 kernels); False: reference q/dq graph only

    def __post_init__(self):
        pt2e.weight_range(self.weight_bits)  # raises on a bad width
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be in [0, 1], not {self.distill}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        for name in ("freeze_bn_after", "freeze_observers_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0 steps, not {v}")
        if self.calib_samples < 1:
            raise ValueError(f"calib_samples must be >= 1, not {self.calib_samples}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class QatResult:
    fp32_accuracy: float
    ptq_accuracy: float  # static_int8's PTQ with the same scheme (reference q/dq graph)
    start_accuracy: float  # the QAT model before training (fake-quantized; should equal PTQ)
    qat_accuracy: float  # after QAT, converted (reference q/dq graph)
    int8_accuracy: float | None  # after QAT, compiled to INT8 kernels (None when lower=False)
    train: TrainResult
    seconds: dict = field(default_factory=dict)  # ptq, prepare, train, convert, compile
    kernels: dict = field(default_factory=dict)  # Inductor's INT8 pattern matches in the compiled model
    quantized: dict = field(default_factory=dict)  # which Conv/Linear got int8 weights
    model: nn.Module | None = None  # the INT8 model (compiled if lower, else the q/dq graph)
    converted: nn.Module | None = None  # the q/dq graph

    @property
    def recovered(self) -> float | None:
        """Share of PTQ's accuracy loss that QAT won back (1.0: all of it)."""
        lost = self.fp32_accuracy - self.ptq_accuracy
        return (self.qat_accuracy - self.ptq_accuracy) / lost if lost > 0 else None

    def summary(self) -> dict:
        return {"fp32_accuracy": self.fp32_accuracy, "ptq_accuracy": self.ptq_accuracy,
                "start_accuracy": self.start_accuracy, "qat_accuracy": self.qat_accuracy,
                "int8_accuracy": self.int8_accuracy, "recovered": self.recovered, "seconds": self.seconds,
                "kernels": self.kernels, "quantized": self.quantized, "train": self.train.summary()}


def fit_qat(model: nn.Module, train_set: Dataset, test_set: Dataset, cfg: QatConfig, train_cfg: TrainConfig, *,
            out: str | None = None, restart: bool = False, progress: bool = True) -> QatResult:
    """PTQ baseline, QAT from PTQ's ranges, conversion to INT8. `model` is the trained FP32 model
    (left unchanged; it is the distillation teacher).

        result = fit_qat(model, train_set, test_set, QatConfig(weight_bits=3), TrainConfig(epochs=2, lr=1e-4))

    1. PTQ baseline: static_int8's flow (export -> histogram observers, per-channel weights ->
       calibrate -> convert) on `calib_samples` training samples; its accuracy is what QAT must beat.
    2. Prepare: the model exported in train mode, prepare_qat_pt2e with the same dtypes and ranges
       but fake-quantize modules (conv+BN fused the QAT way: BN folded into the fake-quantized weight).
    3. Start where PTQ ended: activation fake-quantizers get the PTQ histogram observers' scales
       (same samples); the weight ones the per-channel ranges PTQ uses.
    4. Fine-tune with the reference loop (fit): cross-entropy, optionally mixed with KL divergence to
       the FP32 logits. Weight scales follow the weights (activation scales keep PTQ's unless
       `observe_activations`); after `freeze_observers_after` steps every scale is fixed, after
       `freeze_bn_after` steps BatchNorm uses and keeps its running statistics.
    5. Convert: BN folded, fake-quantizers -> q/dq ops with the learned scales; compiled with Inductor
       freezing (static_int8.Frozen) they become oneDNN INT8 convolutions and matmuls, as for PTQ."""
    if torch.device(train_cfg.device).type != "cpu":
        raise SlimError("QAT here targets the X86 INT8 kernels (PT2E X86InductorQuantizer) and runs on CPU",
                        "use --device cpu")
    missing = pt2e.missing()
    if missing:
        raise SlimError(missing, "pip install torchao")
    if train_cfg.precision not in ("auto", "fp32"):
        raise SlimError(f"QAT trains in FP32 (fake quantization has no {train_cfg.precision} CPU kernels here), "
                        f"not {train_cfg.precision}", "drop --amp or pass --amp fp32")
    train_cfg = dataclasses.replace(train_cfg, precision="fp32")
    teacher = copy.deepcopy(model).eval()
    check_fits(teacher, train_set, "training set")
    check_fits(teacher, test_set, "test set")
    secs: dict[str, float] = {}
    say = _say if progress and current_world().main else (lambda msg: None)
    say("scoring the FP32 model")
    fp32_acc = accuracy(teacher, test_set, train_cfg.eval_batch_size)
    calib = _calibration_batches(train_set, cfg.calib_samples, train_cfg.batch_size)
    example = Example((calib[0],))

    say(f"PTQ baseline: int{cfg.weight_bits} weights, calibrated on {sum(len(c) for c in calib)} samples")
    t = time.perf_counter()
    ptq_model = ptq(teacher, example, calib, cfg.weight_bits)
    secs["ptq"] = time.perf_counter() - t
    ptq_acc = accuracy(ptq_model, test_set, train_cfg.eval_batch_size)

    say("preparing the QAT graph from PTQ's ranges")
    t = time.perf_counter()
    prepared = prepare(teacher, example, cfg.weight_bits)
    start_from_ptq(prepared, calib)
    secs["prepare"] = time.perf_counter() - t
    start_acc = accuracy(prepared, test_set, train_cfg.eval_batch_size)

    total_steps = train_cfg.epochs * (len(train_set) // train_cfg.batch_size)
    hooks = Hooks(before_step=Freezer(_at(cfg.freeze_bn_after, 0.6, total_steps),
                                      _at(cfg.freeze_observers_after, 0.8, total_steps), cfg.observe_activations),
                  set_mode=set_mode)
    t = time.perf_counter()
    result = fit(prepared, train_set, train_cfg, test_set=test_set, out=out, restart=restart, hooks=hooks,
                 loss_fn=distillation(teacher, cfg.distill, cfg.temperature, train_cfg.label_smoothing),
                 progress=progress, settings={"qat": cfg.to_dict()}, check_data=False)
    secs["train"] = time.perf_counter() - t

    say("converting to INT8 (quantize/dequantize graph)")
    t = time.perf_counter()
    converted = convert(prepared)
    secs["convert"] = time.perf_counter() - t
    qat_acc = accuracy(converted, test_set, train_cfg.eval_batch_size)
    quantized = pt2e.summarize(converted)
    int8_model, int8_acc, kernels = converted, None, {}
    if cfg.lower:
        say("compiling with Inductor (oneDNN INT8 kernels)")
        t = time.perf_counter()
        int8_model, kernels = lower(converted, example)
        secs["compile"] = time.perf_counter() - t
        int8_acc = accuracy_fixed_batch(int8_model, test_set, int(example.args[0].shape[0]))
    return QatResult(fp32_accuracy=fp32_acc, ptq_accuracy=ptq_acc, start_accuracy=start_acc, qat_accuracy=qat_acc,
                     int8_accuracy=int8_acc, train=result, seconds=secs, kernels=kernels,
                     quantized={k: quantized[k] for k in ("quantized", "total", "left_in_float")},
                     model=int8_model, converted=converted)


# -- the steps ------------------------------------------------------------------------------------

def ptq(model: nn.Module, example: Example, calib: list[torch.Tensor], weight_bits: int = 8) -> torch.fx.GraphModule:
    """static_int8's PTQ (histogram activations, per-channel weights narrowed to `weight_bits`) as a
    converted reference q/dq graph: the quant.pt2e flow, every calibration batch used."""
    gm, _ = pt2e.export(_for_export(model, example, training=False), example)
    quantizer = pt2e.x86_quantizer(observer="histogram", per_channel=True, reduce_range=needs_reduce_range(),
                                   weight_bits=weight_bits)
    prepared = pt2e.prepare(gm, quantizer)
    with torch.no_grad():
        pt2e.calibrate(prepared, [Example((x,)) for x in calib], example, progress=False)
        converted = pt2e.convert(prepared)
    pt2e.drop_unused_tensors(converted)
    return converted


def prepare(model: nn.Module, example: Example, weight_bits: int = 8) -> torch.fx.GraphModule:
    """The model exported in train mode with fake-quantize modules (observers not yet seeded)."""
    gm, _ = pt2e.export(_for_export(model, example, training=True), example)
    try:
        prepared = qat.prepare_qat(gm, qat.x86_qat_quantizer(weight_bits, needs_reduce_range()))
    except (IndexError, NotImplementedError, AssertionError, RuntimeError) as e:
        where = first_line(e)
        raise SlimError(f"torchao's X86InductorQuantizer could not prepare this model for QAT ({type(e).__name__}: {where[:200]})",
                        "use PTQ (static_int8) for this model") from e
    qat.set_training(prepared, False)
    return prepared


def start_from_ptq(prepared: torch.fx.GraphModule, calib: list[torch.Tensor]) -> None:
    """Seed the fake-quantizers with PTQ's ranges: run the calibration batches through the model in
    eval mode with fake quantization off (float, as PTQ calibrates), feeding every activation
    quantizer's input to a histogram observer like static_int8's; then set each activation
    quantizer's scale/zero point (and its min/max observer's range) from the histogram, and let the
    weight quantizers observe the current (BN-folded) weights once."""
    qat.set_training(prepared, False)
    fqs = qat.fake_quantizers(prepared)
    acts = [m for _, m in fqs if not _is_weight(m)]
    for _, m in fqs:
        m.disable_fake_quant()
        m.disable_observer()
    hists = [qat.histogram_observer(needs_reduce_range()) for _ in acts]
    hooks = [m.register_forward_pre_hook(lambda mod, args, h=h: h(args[0].detach())) for m, h in zip(acts, hists)]
    try:
        with torch.no_grad():
            for x in calib:
                prepared(x)
    finally:
        for h in hooks:
            h.remove()
    for m, h in zip(acts, hists):
        scale, zp = h.calculate_qparams()
        m.scale.resize_(scale.shape).copy_(scale)
        m.zero_point.resize_(zp.shape).copy_(zp.to(m.zero_point.dtype))
        obs = m.activation_post_process  # the range that reproduces these qparams, so updates start from it
        obs.min_val.resize_(()).fill_(float((obs.quant_min - zp.float()) * scale))
        obs.max_val.resize_(()).fill_(float((obs.quant_max - zp.float()) * scale))
    for _, m in fqs:
        if _is_weight(m):
            m.enable_observer()
    with torch.no_grad():
        prepared(calib[0])  # the weight quantizers see the weights once
    for _, m in fqs:
        m.enable_fake_quant()
        m.disable_observer()  # training turns them on (Freezer); evaluation must not move them


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fake-quantize modules -> quantize/dequantize ops with the trained scales (reference graph);
    `prepared` is left as it is."""
    model = copy.deepcopy(prepared)
    qat.set_training(model, False)
    with torch.no_grad():
        converted = qat.convert_qat(model)
    qat.set_training(converted, False)
    pt2e.drop_unused_tensors(converted)
    return converted


def lower(converted: torch.fx.GraphModule, example: Example) -> tuple[nn.Module, dict]:
    """Compile with Inductor freezing (static_int8.Frozen) and run once; returns the compiled model
    and how many INT8 conv/linear weight patterns Inductor replaced by oneDNN kernels."""
    from torch._dynamo.utils import counters

    from ..compiled import Frozen

    keys = {"conv": "qconv_weight_prepack_matcher_count", "linear": "qlinear_weight_prepack_matcher_count"}
    before = {k: counters["inductor"][v] for k, v in keys.items()}
    model = Frozen(converted)
    with quiet():
        example(model)
    return model, {k: counters["inductor"][v] - before[k] for k, v in keys.items()}


def accuracy_fixed_batch(model: nn.Module, ds: Dataset, batch: int) -> float:
    """Top-1 accuracy calling `model` only with `batch` rows (a compiled model keeps one shape);
    the last chunk is padded with copies of its final row."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch):
            x, y = take(ds, range(start, min(len(ds), start + batch)))
            real = len(x)
            if real < batch:
                x = torch.cat([x, x[-1:].expand(batch - real, *x.shape[1:])])
            correct += int((model(x.contiguous())[:real].float().argmax(-1) == y).sum())
    return 100.0 * correct / len(ds)


# -- training hooks -------------------------------------------------------------------------------

def set_mode(model: torch.fx.GraphModule, training: bool) -> None:
    """train()/eval() for the QAT graph. Evaluation never moves a scale: observers go off here, and
    the Freezer turns them back on (or not) before each training step."""
    qat.set_training(model, training)
    if not training:
        _set_observers(model, False)


class Freezer:
    """before_step hook: observers update until step `observers_at` (activation observers only if
    `activations`), then every scale stays fixed; from step `bn_at` on, BatchNorm uses (and stops
    updating) its running statistics.
    Everything is decided by the step number alone, so a resumed run re-applies exactly what the
    interrupted one had (the BN switch is a graph edit, not part of the checkpoint)."""

    def __init__(self, bn_at: int, observers_at: int, activations: bool = False):
        self.bn_at, self.observers_at, self.activations = bn_at, observers_at, activations

    def __call__(self, model: torch.fx.GraphModule, step: int) -> None:
        if step >= self.bn_at:
            qat.freeze_batchnorm(model)
        observing = step < self.observers_at
        for _, m in qat.fake_quantizers(model):
            m.enable_observer(observing and (self.activations or _is_weight(m)))


def distillation(teacher: nn.Module, weight: float, temperature: float, label_smoothing: float = 0.0) -> LossFn:
    """(1 - weight) * cross-entropy + weight * T^2 * KL(teacher || student) on logits softened by T."""
    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if weight == 0:
            return ce
        with torch.no_grad():
            target = teacher(x).float()
        t = temperature
        kl = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(target / t, -1),
                      log_target=True, reduction="batchmean") * (t * t)
        return (1 - weight) * ce + weight * kl

    return loss


# -- helpers --------------------------------------------------------------------------------------

def _for_export(model: nn.Module, example: Example, training: bool) -> nn.Module:
    """A copy ready for torch.export: activations called twice get one module per call (as in
    static_int8), then train or eval mode."""
    m = copy.deepcopy(model).eval()
    pt2e.unshare_activations(m, example)  # runs the example in eval mode: BN statistics stay as they are
    return m.train(training)


def _calibration_batches(ds: Dataset, samples: int, batch: int) -> list[torch.Tensor]:
    n = min(len(ds), samples)
    xs = take(ds, range(n))[0]
    b = max(2, min(batch, n))  # BN in train mode needs 2+ rows when the export traces it
    return [xs[i:i + b] for i in range(0, n - b + 1, b)] or [xs]


def _is_weight(fq) -> bool:
    return fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine, torch.per_tensor_symmetric) \
        and fq.dtype in (torch.int8, torch.qint8)


def _set_observers(model: nn.Module, on: bool) -> None:
    for _, m in qat.fake_quantizers(model):
        m.enable_observer(on)


def _say(msg: str) -> None:
    import sys

    print(f"torchslim qat: {msg}", file=sys.stderr, flush=True)


def _at(steps: int | None, share: float, total: int) -> int:
    return int(share * total) if steps is None else steps


def load_int8(path: str) -> nn.Module:
    """A QAT result saved with save_int8(), compiled back onto the INT8 kernels."""
    from ..compiled import Frozen

    try:
        ep = torch.export.load(path)
    except Exception as e:  # noqa: BLE001
        raise SlimError(f"cannot load the INT8 model '{path}': {e}", "re-run torchslim qat to write it again") from e
    return Frozen(ep.module())


def save_int8(converted: torch.fx.GraphModule, example: Example, path: str) -> None:
    """The converted q/dq graph as a torch.export program (atomic write), loadable by load_int8()
    or as a `model.pt2` model spec."""
    from ..fileio import atomic_write
    with quiet(export=True):
        try:
            ep = torch.export.export(converted, tuple(example.args), strict=False, dynamic_shapes=pt2e.auto_shapes(converted, example))
        except Exception:  # noqa: BLE001 - fall back to the example's fixed shapes
            ep = torch.export.export(converted, tuple(example.args), strict=False)
    atomic_write(path, lambda f: torch.export.save(ep, f))
