"""`torchslim train` (mixed precision, resumable, under torchrun too) and `torchslim qat`."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import SlimError
from . import options

TRAIN_OUT = "torchslim-train"
QAT_OUT = "torchslim-qat"


def _training(*, out: str, epochs: int, lr: float, schedule: str) -> list[argparse.ArgumentParser]:
    """The parents of train and qat: the shared options and the training ones, with this command's defaults."""
    from ..training.loop import SCHEDULES

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", required=True, help="dataset: fashion-mnist, digits, digits-images, or file.py:fn returning (train, test)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size, split over torchrun processes (default 64)")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (peak of the schedule; default {lr:g})")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--schedule", default=schedule, choices=SCHEDULES, help=f"learning-rate schedule (default {schedule})")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order and dropout (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default 0: every epoch)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and train from the start")
    return [options.model(required=True), p, options.out("checkpoint, weights, summary", out),
            options.device("cpu", "cpu or cuda"), options.progress(), options.debug()]


def add_train(sub) -> argparse.ArgumentParser:
    from ..training.amp import PRECISIONS
    from ..training.data import DATASETS

    t = sub.add_parser("train", help="train a classifier with mixed precision (resumable; runs under torchrun)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DATASETS + _EPILOG,
                       parents=_training(out=TRAIN_OUT, epochs=2, lr=1e-3, schedule="onecycle"))
    t.add_argument("--amp", default="auto", choices=PRECISIONS,
                   help="precision: auto (BF16 on CPUs with AMX/AVX-512 BF16 and on Ampere+ GPUs, FP16 with a "
                        "gradient scaler on older GPUs, else FP32), fp32, bf16, fp16")
    return t


def add_qat(sub) -> argparse.ArgumentParser:
    from ..training.data import DATASETS

    q = sub.add_parser("qat", help="quantization-aware training from the PTQ (static INT8) scheme, converted to INT8 kernels",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=DATASETS + _EPILOG,
                       parents=_training(out=QAT_OUT, epochs=2, lr=1e-4, schedule="cosine") + [options.calibration(data=False)])
    q.add_argument("--weight-bits", type=int, default=8,
                   help="weight bits, 2..8 (below 8: int8 values in a narrower range, same kernels; default 8)")
    q.add_argument("--distill", type=float, default=0.0,
                   help="weight of the KL-divergence term to the FP32 model's logits, 0..1 (default 0: plain cross-entropy)")
    q.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    q.add_argument("--freeze-bn-after", type=int, default=None, help="steps before BatchNorm statistics freeze (default: 60%% of the steps)")
    q.add_argument("--freeze-observers-after", type=int, default=None,
                   help="steps before every quantization scale freezes (default: 80%% of the steps; 0: keep PTQ's)")
    q.add_argument("--observe-activations", action="store_true",
                   help="let activation scales follow a moving min/max during QAT (default: keep PTQ's histogram scales)")
    q.add_argument("--no-compile", action="store_true", help="skip compiling the INT8 model (report the q/dq graph only)")
    return q


_EPILOG = """

model specs: as for `torchslim optimize` (file.py:factory, package.module:factory, ...); the model must
be a Python nn.Module returning [batch, classes] logits. Re-running the same command resumes from --out/checkpoint.pt."""


def _train_config(args, precision: str):
    from ..training.loop import TrainConfig

    try:
        return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           schedule=args.schedule, label_smoothing=args.label_smoothing, precision=precision,
                           grad_clip=args.grad_clip, seed=args.seed, checkpoint_every=args.checkpoint_every,
                           device=args.device)
    except ValueError as e:
        raise SlimError(f"bad training option: {e}", "see torchslim train --help") from e


def _load(args):
    import torch

    from ..loading import load_model
    from ..training.data import load

    wl = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle, need_example=False)
    model = wl.model
    if isinstance(model, torch.jit.ScriptModule) or type(model).__name__ == "GraphModule":
        raise SlimError(f"'{args.model}' is a TorchScript/torch.export program; training needs the Python model",
                        "give the architecture as file.py:factory (and its weights with --weights)")
    train, test = load(args.data, args.limit)
    return model, train, test, wl.name


def run_train(args) -> int:
    import torch

    from ..fileio import atomic_write, write_json
    from ..measure import num_threads
    from ..training import distributed
    from ..training.loop import fit

    cfg = _train_config(args, args.amp)
    out = args.out or TRAIN_OUT
    with num_threads(args.threads), distributed.started(torch.device(args.device)) as world:
        model, train, test, name = _load(args)
        result = fit(model, train, cfg, test_set=test, out=out, restart=args.restart, progress=not args.no_progress)
        if world.main:
            state = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
            atomic_write(os.path.join(out, "model.pt"), lambda f: torch.save(state, f))
            summary = {"model": args.model, "data": args.data, "config": cfg.to_dict(), **result.summary()}
            write_json(os.path.join(out, "summary.json"), summary)
            _print_train(name, args, result, out)
    return 0


def run_qat(args) -> int:
    import torch

    from ..fileio import write_json
    from ..inputs import Example
    from ..measure import num_threads
    from ..training import distributed
    from ..training.qat import QatConfig, fit_qat, save_int8

    cfg = _train_config(args, "fp32")
    try:
        qcfg = QatConfig(weight_bits=args.weight_bits, distill=args.distill, temperature=args.temperature,
                         freeze_bn_after=args.freeze_bn_after, freeze_observers_after=args.freeze_observers_after,
                         observe_activations=args.observe_activations, calib_samples=args.calib_samples,
                         lower=not args.no_compile)
    except ValueError as e:
        raise SlimError(f"bad QAT option: {e}", "see torchslim qat --help") from e
    out = args.out or QAT_OUT
    with num_threads(args.threads), distributed.started(torch.device(args.device)) as world:
        model, train, test, name = _load(args)
        res = fit_qat(model, train, test, qcfg, cfg, out=out, restart=args.restart, progress=not args.no_progress)
        if world.main:
            from ..training.data import take

            example = Example((take(train, range(min(len(train), cfg.batch_size)))[0],))
            save_int8(res.converted, example, os.path.join(out, "qat_int8.pt2"))
            write_json(os.path.join(out, "summary.json"),
                       {"model": args.model, "data": args.data, "qat": qcfg.to_dict(), "config": cfg.to_dict(), **res.summary()})
            _print_qat(name, args, res, out)
    return 0


# -- summaries ------------------------------------------------------------------------------------

def _print_train(name: str, args, result, out: str) -> None:
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    print(f"trained {name} on {args.data}: {len(result.epochs)} epochs, {result.steps} steps, {result.precision} "
          f"({result.world_size} process{'es' if result.world_size > 1 else ''}{resumed})")
    for note in result.notes:
        print(f"  note: {note}")
    print(f"{'epoch':>5}  {'train loss':>10}  {'test acc %':>10}  {'seconds':>8}")
    for e in result.epochs:
        acc = e.get("test_accuracy")
        print(f"{e['epoch']:>5}  {e['train_loss']:>10.4f}  {acc if acc is None else format(acc, '.2f'):>10}  {e['seconds']:>8.1f}")
    print(f"\nwrote {out}/model.pt, {out}/summary.json (checkpoint: {out}/checkpoint.pt)")


def _print_qat(name: str, args, res, out: str) -> None:
    bits = args.weight_bits
    gap = lambda acc: f"{acc - res.fp32_accuracy:+.2f}" if acc is not None else ""  # noqa: E731
    rows = [("FP32", res.fp32_accuracy), (f"PTQ (int{bits} weights, uint8 activations)", res.ptq_accuracy),
            ("QAT start (fake-quantized, from PTQ ranges)", res.start_accuracy),
            ("QAT, converted (q/dq graph)", res.qat_accuracy)]
    if res.int8_accuracy is not None:
        k = res.kernels
        rows.append((f"QAT, INT8 kernels ({k.get('conv', 0)} conv + {k.get('linear', 0)} linear)", res.int8_accuracy))
    print(f"QAT of {name} on {args.data}: {res.train.steps} steps in {res.seconds.get('train', 0):.0f} s")
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'accuracy %':>10}  {'vs FP32':>8}")
    for label, acc in rows:
        print(f"{label:{width}}  {acc:>10.2f}  {gap(acc):>8}")
    if res.recovered is not None:
        print(f"QAT recovered {100 * res.recovered:.0f}% of the {res.fp32_accuracy - res.ptq_accuracy:.2f} points PTQ lost")
    else:
        print("PTQ lost no accuracy here, so there was nothing for QAT to recover")
    if bits < 8:
        print(f"note: int{bits} weights are stored and computed as int8 (same kernels as 8-bit: no size or speed gain)")
    print(f"\nwrote {out}/qat_int8.pt2 (load with torchslim.training.qat.load_int8), {out}/summary.json", file=sys.stdout)
