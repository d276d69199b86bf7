"""A short reference training loop for classification, readable top to bottom:
`fit(model, train_set, TrainConfig(epochs=2, precision="auto"), test_set=test_set, out="run/")`."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from ..errors import SlimError
from ..progress import bar as progress_bar
from . import amp as amp_mod
from . import checkpoint as ckpt
from . import distributed as dist_mod
from .data import check_fits, take

SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64  # global: split evenly across torchrun processes
    lr: float = 1e-3  # AdamW; the peak of the one-cycle schedule
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # "onecycle" | "cosine" | "constant"
    label_smoothing: float = 0.0
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (see amp.choose)
    grad_clip: float | None = None  # max gradient norm
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of every epoch only
    device: str = "cpu"
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, not {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.precision not in amp_mod.PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use one of {', '.join(amp_mod.PRECISIONS)}")
        if self.checkpoint_every < 0 or self.eval_batch_size < 1:
            raise ValueError("checkpoint_every must be >= 0 and eval_batch_size >= 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be a positive norm, not {self.grad_clip}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**d)


# loss_fn(logits, inputs, labels) -> scalar loss (inputs are there for distillation teachers)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Hooks:
    """Where a training flavour (QAT) plugs into the loop without a trainer class."""

    # before_step(model, step): called before every step with the global step count (0-based);
    # must be idempotent for a given step, since a resumed run calls it again from the checkpoint's step.
    before_step: Callable[[nn.Module, int], None] | None = None
    # set_mode(model, training): model.train()/.eval() for models that need another switch (torch.export graphs)
    set_mode: Callable[[nn.Module, bool], None] | None = None


@dataclass
class TrainResult:
    model: nn.Module  # the trained model (unwrapped from DDP), in eval mode
    history: list[float]  # mean loss over the global batch, per step
    epochs: list[dict]  # per epoch: train_loss, test_accuracy, seconds
    steps: int
    seconds: float  # this process's training time (a resumed run counts only its own part)
    precision: str
    world_size: int
    resumed_from: int | None = None  # the step a checkpoint resumed from
    test_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["final_loss"] = self.history[-1] if self.history else None
        return d


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, x, y: F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def fit(model: nn.Module, train_set: Dataset, cfg: TrainConfig, *, test_set: Dataset | None = None,
        out: str | None = None, restart: bool = False, loss_fn: LossFn | None = None, hooks: Hooks | None = None,
        progress: bool = True, settings: dict | None = None, check_data: bool = True) -> TrainResult:
    """Train `model` (in place) on `train_set`; see the comments below. `out` holds the checkpoint
    (resumed unless `restart`); `settings` are extra facts a resumed run must match (e.g. QAT's);
    `check_data=False` skips the trial batch (for callers that checked already)."""
    # In order: check that the data fits the model; pick the precision (amp.choose); split each global
    # batch across processes when started by torchrun (distributed.py); resume from `out/checkpoint.pt`
    # if one is there; then for every batch: forward and loss under autocast, stop on a non-finite loss
    # (keeping the last good checkpoint), backward and step through the gradient scaler, and write a
    # checkpoint every `checkpoint_every` steps and at the end of every epoch.
    hooks = hooks or Hooks()
    set_mode = hooks.set_mode or (lambda m, training: m.train(training))
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    world = dist_mod.current()
    device = dist_mod.device_for(world, torch.device(cfg.device))
    if cfg.batch_size % world.size:
        raise SlimError(f"batch size {cfg.batch_size} does not split evenly over {world.size} processes",
                        f"use a batch size divisible by {world.size}")
    per_rank = cfg.batch_size // world.size
    if check_data:
        check_fits(model, train_set, "training set")
        if test_set is not None:
            check_fits(model, test_set, "test set")

    model.to(device)
    amp = amp_mod.choose(cfg.precision, device)
    # Exact resumption: the batch order of epoch e is a permutation seeded by (seed, e) (the
    # DistributedSampler's rule), so a resumed run regenerates it and skips the batches already done;
    # model, optimizer, scheduler, scaler and RNG states come from the checkpoint. A run killed at any
    # point and resumed ends with the same weights as one that was never interrupted (same thread count).
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise SlimError(f"the training set has {len(train_set)} samples, fewer than one batch of {cfg.batch_size}",
                        "use a smaller --batch-size or more data")
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg, total)
    scaler = amp.scaler()
    trained = dist_mod.wrap(model, world, device)
    run_settings = {**_settings(cfg, amp, len(train_set)), **(settings or {})}

    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed + world.rank)  # dropout etc.; the caller's RNG is left as it was
        start = _resume(out, restart, model, opt, sched, scaler, run_settings, world)
        result = TrainResult(model=model, history=list(start["history"]), epochs=list(start["epochs"]), steps=start["step"],
                             seconds=0.0, precision=amp.precision, world_size=world.size,
                             resumed_from=start["step"] if start["resumed"] else None, notes=[amp.note] if amp.note else [])
        if start.get("rng_note"):
            result.notes.append(start["rng_note"])
        t0 = time.perf_counter()
        bar = progress_bar(total, "training", "step", progress and world.main, initial=result.steps)
        try:
            for epoch in range(start["epoch"], cfg.epochs):
                sampler.set_epoch(epoch)
                order = list(sampler)
                set_mode(model, True)
                epoch_t0 = time.perf_counter()
                skip = start["step_in_epoch"] if epoch == start["epoch"] else 0
                for i in range(skip, steps_per_epoch):
                    x, y = take(train_set, order[i * per_rank:(i + 1) * per_rank])
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if hooks.before_step:
                        hooks.before_step(model, result.steps)
                    with amp.autocast():
                        logits = trained(x)
                        loss = loss_fn(logits, x, y)
                    value = float(dist_mod.mean(loss.detach(), world))
                    if not math.isfinite(value):
                        raise _non_finite(value, result.steps, epoch, out)
                    opt.zero_grad(set_to_none=True)
                    amp_mod.backward_and_step(loss, opt, scaler, cfg.grad_clip)
                    if sched is not None:
                        sched.step()
                    result.steps += 1
                    result.history.append(value)
                    bar.update()
                    if result.steps % 20 == 0:
                        bar.set_postfix(loss=f"{value:.4f}", epoch=epoch + 1)
                    if cfg.checkpoint_every and result.steps % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                        _save(out, model, opt, sched, scaler, run_settings, world, result, epoch, i + 1)
                set_mode(model, False)
                done = result.history[-steps_per_epoch:]
                record = {"epoch": epoch + 1, "train_loss": sum(done) / len(done),
                          "seconds": time.perf_counter() - epoch_t0}
                if test_set is not None and world.main:
                    record["test_accuracy"] = accuracy(model, test_set, cfg.eval_batch_size, device)
                result.epochs.append(record)
                _save(out, model, opt, sched, scaler, run_settings, world, result, epoch + 1, 0)
        finally:
            bar.close()
        result.seconds = time.perf_counter() - t0
    set_mode(model, False)
    if test_set is not None:
        last = result.epochs[-1] if result.epochs else {}
        result.test_accuracy = last.get("test_accuracy")
        if result.test_accuracy is None and world.main:
            result.test_accuracy = accuracy(model, test_set, cfg.eval_batch_size, device)
    return result


def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent, FP32, no grad (the model should already be in eval mode)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            x, y = take(ds, range(start, min(len(ds), start + batch_size)))
            logits = model(x.to(device))
            correct += int((logits.float().argmax(-1).cpu() == y).sum())
    return 100.0 * correct / len(ds)


# -- pieces -----------------------------------------------------------------------------------------

def _scheduler(opt, cfg: TrainConfig, total: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def _settings(cfg: TrainConfig, amp: amp_mod.Amp, n_train: int) -> dict:
    """What a resumed run must share with the checkpoint's run to continue the same trajectory.
    The process count is not among them: the global batches are the same for any count."""
    keep = {k: v for k, v in cfg.to_dict().items() if k not in ("checkpoint_every", "eval_batch_size", "device", "precision")}
    return {**keep, "precision": amp.precision, "train_samples": n_train}


def _resume(out, restart, model, opt, sched, scaler, settings, world) -> dict:
    fresh = {"epoch": 0, "step_in_epoch": 0, "step": 0, "history": [], "epochs": [], "resumed": False}
    if not out or restart or not ckpt.exists(out):
        return fresh
    path = ckpt.path_in(out)
    state = ckpt.read(path)
    progress = ckpt.restore(state, path, model=model, optimizer=opt, scheduler=sched, scaler=scaler, settings=settings)
    rng = state["rng"]
    note = None
    if len(rng) == world.size:
        ckpt.set_rng_state(rng[world.rank])
    else:  # another process count: batches are the same, dropout masks are not
        note = f"resumed a {len(rng)}-process checkpoint with {world.size} processes: RNG streams restarted"
    return {**fresh, **{k: progress[k] for k in ("epoch", "step_in_epoch", "step", "history", "epochs")},
            "resumed": True, "rng_note": note}


def _save(out, model, opt, sched, scaler, settings, world, result: TrainResult, epoch: int, step_in_epoch: int) -> None:
    if not out:
        return
    rng = dist_mod.gather(ckpt.rng_state(), world)  # every process takes part, only the main one writes
    if world.main:
        progress = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": result.steps,
                    "history": list(result.history), "epochs": list(result.epochs)}
        ckpt.save(ckpt.path_in(out), model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                  progress=progress, settings=settings, rng=rng)


def _non_finite(value: float, step: int, epoch: int, out: str | None) -> SlimError:
    kept = ""
    if out and ckpt.exists(out):
        state = ckpt.read(ckpt.path_in(out))
        kept = f"; the last good checkpoint (step {state['progress']['step']}) is kept at {ckpt.path_in(out)}"
    return SlimError(f"the training loss became {value} at step {step + 1} (epoch {epoch + 1}); training stopped{kept}",
                     "lower the learning rate, clip gradients, train in fp32 or bf16 instead of fp16, "
                     "or check the data for NaN/inf values")

