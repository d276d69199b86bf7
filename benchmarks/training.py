"""Training-time efficiency on this machine: mixed precision against FP32, and what QAT buys and costs.

1. AMP: one full training step (forward, loss, backward, AdamW update) of the Fashion-MNIST CNN
   (batch 128, channels-last, as the built-in example trains it) and of a BERT-like encoder
   (transformers BertConfig, 4 layers x 256 hidden, 4 heads, built from config with random
   weights, sequence classification, batch 16 x 128 tokens), in FP32 and BF16 autocast (FP16 too
   with --fp16). Same process, interleaved round by round after warm-up; medians with 95% CIs,
   and peak step memory (rise of the process RSS high-water mark, or CUDA max allocated).
2. QAT: the trained Fashion-MNIST CNN with narrowed weights (--bits; int8 storage, same INT8
   kernels), PTQ exactly as static_int8 does it, then QAT from PTQ's ranges for --epochs epochs
   of the full training set; accuracy on the 10000 test images for FP32, PTQ, QAT (q/dq graph)
   and QAT compiled to INT8 kernels, and the time QAT took (per step, against an FP32 step).

    python benchmarks/training.py                 # full: ~20-30 min on 2 idle cores
    python benchmarks/training.py --quick         # small sizes, to check that it runs (~3-5 min)
    python benchmarks/training.py --skip-qat --threads 2
Prints a markdown section; --json PATH also writes the raw numbers.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torchslim.fileio import write_json  # noqa: E402


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2 ** 20:.0f} MiB"


# -- AMP ------------------------------------------------------------------------------------------

def fashion_case(batch: int):
    from torchslim.examples import fashion_mnist as fm

    x, y = fm.load_split(train=True)
    torch.manual_seed(0)
    model = fm.FashionCNN().to(memory_format=torch.channels_last)
    xb = x[:batch].contiguous(memory_format=torch.channels_last)
    return f"Fashion-MNIST CNN, batch {batch}", model, (xb, y[:batch]), lambda out, t: F.cross_entropy(out.float(), t)


def bert_case(batch: int, seq: int):
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=1024, max_position_embeddings=512, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 29000, (batch, seq), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, 2, (batch,), generator=g)
    return (f"BERT-like encoder (4 x 256, from BertConfig), batch {batch} x {seq} tokens", model, (inputs, labels),
            lambda out, t: F.cross_entropy(out.logits.float(), t))


def amp_section(args) -> tuple[list[str], dict]:
    from torchslim.training import amp

    precisions = ("fp32", "bf16") + (("fp16",) if args.fp16 else ())
    cases = [fashion_case(32 if args.quick else 128), bert_case(4 if args.quick else 16, 64 if args.quick else 128)]
    lines = ["", "### Mixed precision: one training step, AMP vs FP32", "",
             "| model | precision | step median (95% CI) | vs FP32 | peak step memory | vs FP32 |",
             "|---|---|---|---|---|---|"]
    raw = {}
    for name, model, batch, loss_fn in cases:
        print(f"timing: {name}", file=sys.stderr, flush=True)
        got = amp.compare(model, batch, loss_fn, precisions=precisions, rounds=args.rounds, warmup=2)
        raw[name] = got
        for p in precisions:
            g = got[p]
            lo, hi = g["ci95_ms"]
            lines.append(f"| {name} | {p} | {g['median_ms']:.1f} ms ({lo:.1f}-{hi:.1f}) | {g['speedup_vs_fp32']:.2f}x | "
                         f"{_mib(g.get('peak_bytes'))} | {g.get('memory_vs_fp32', float('nan')):.2f}x |")
    notes = {p: amp.choose(p, "cpu").note for p in precisions if amp.choose(p, "cpu").note}
    lines += ["", "vs FP32: FP32's median step time over this precision's (above 1 = faster); memory: this "
              "precision's peak over FP32's (below 1 = less). Weights and optimizer state stay FP32 in every mode; "
              "autocast runs matmuls/convs in the low precision. `auto` picks "
              f"{amp.choose('auto', 'cpu').precision} here ({amp.choose('auto', 'cpu').note})."]
    for p, n in notes.items():
        lines.append(f"- {p}: {n}")
    return lines, raw


# -- QAT ------------------------------------------------------------------------------------------

def qat_section(args) -> tuple[list[str], dict]:
    from torch.utils.data import TensorDataset

    from torchslim.examples import fashion_mnist as fm
    from torchslim.inputs import Example
    from torchslim.training import data
    from torchslim.training.loop import TrainConfig, accuracy
    from torchslim.training.qat import QatConfig, fit_qat, ptq

    model = fm.pretrained()
    train, test = data.load("fashion-mnist", limit=2048 if args.quick else None)
    if args.quick:
        test = TensorDataset(*(t[:1000] for t in test.tensors))
    calib = [data.take(train, range(i, i + 128))[0] for i in range(0, 256, 128)]
    fp32 = accuracy(model, test)
    rows = ["", f"### QAT: Fashion-MNIST CNN, PTQ vs QAT ({len(test)} test images)", ""]
    raw: dict = {"fp32_accuracy": fp32, "ptq": {}, "qat": {}}

    # PTQ alone for every width: where does PTQ lose accuracy?
    rows += ["| weights | PTQ accuracy | gap to FP32 |", "|---|---|---|"]
    rows.append(f"| FP32 | {fp32:.2f} | - |")
    for bits in args.ptq_bits:
        acc = accuracy(ptq(model, Example((calib[0],)), calib, bits), test)
        raw["ptq"][bits] = acc
        rows.append(f"| int{bits} (uint8 activations) | {acc:.2f} | {acc - fp32:+.2f} |")
        print(f"PTQ int{bits}: {acc:.2f}", file=sys.stderr, flush=True)

    rows += ["", f"QAT: {args.epochs} epochs of {len(train)} images, batch 128, AdamW lr {args.lr:g} (cosine), "
             "BN frozen after 60% and weight scales after 80% of the steps, activation scales kept from PTQ"
             + (f", distillation weight {args.distill}" if args.distill else "") + ".", "",
             "| weights | FP32 | PTQ | QAT start | QAT (q/dq) | QAT INT8 kernels | recovered | QAT train time | QAT step vs FP32 step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for bits in args.qat_bits:
        print(f"QAT int{bits} ...", file=sys.stderr, flush=True)
        cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, schedule="cosine")
        res = fit_qat(model, train, test, QatConfig(weight_bits=bits, distill=args.distill), cfg, progress=not args.no_progress)
        step_qat, step_fp32 = _step_times(model, res, data.take(train, range(128)), args.rounds)
        raw["qat"][bits] = {**res.summary(), "step_ms": {"qat": step_qat, "fp32": step_fp32}}
        raw["qat"][bits]["train"].pop("history", None)
        rec = "n/a" if res.recovered is None else f"{100 * res.recovered:.0f}%"
        k = res.kernels
        rows.append(f"| int{bits} | {res.fp32_accuracy:.2f} | {res.ptq_accuracy:.2f} | {res.start_accuracy:.2f} | "
                    f"{res.qat_accuracy:.2f} | {res.int8_accuracy:.2f} ({k.get('conv', 0)} conv + {k.get('linear', 0)} linear) | "
                    f"{rec} | {res.seconds['train']:.0f} s ({res.train.steps} steps) | "
                    f"{step_qat:.0f} ms vs {step_fp32:.0f} ms ({step_qat / step_fp32:.1f}x) |")
        print(rows[-1], file=sys.stderr, flush=True)
    rows += ["", "PTQ = static_int8's flow (histogram activation observers, per-channel min/max weights, 256 calibration "
             "images). QAT start = the fake-quantized QAT graph seeded from PTQ's ranges, before training. "
             "QAT INT8 kernels = the converted graph compiled with Inductor freezing: the q/dq patterns become oneDNN "
             "INT8 conv/linear kernels (counted from Inductor's pattern matches), as for PTQ. Narrow weights are int8 "
             "values in [-2^(b-1), 2^(b-1)-1]: same kernels, same size as 8-bit; they are here because they make PTQ "
             "lose accuracy. Train time includes the per-epoch test evaluation. Step times: one training step at "
             "batch 128 (FP32 model vs fake-quantized QAT graph), interleaved medians."]
    return rows, raw


def _step_times(model, res, batch, rounds) -> tuple[float, float]:
    """Median ms of one FP32 training step of the CNN and one QAT step (a fresh QAT graph)."""
    from torchslim import measure
    from torchslim.inputs import Example
    from torchslim.training.qat import prepare, start_from_ptq

    x, y = batch
    prepared = prepare(model, Example((x,)), 8)
    start_from_ptq(prepared, [x])
    from torchslim.quant import qat

    qat.set_training(prepared, True)
    fp32 = copy.deepcopy(model).train()

    def stepper(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-6)

        def step():
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    got = measure.interleaved({"qat": stepper(prepared), "fp32": stepper(fp32)}, rounds=max(3, rounds // 2),
                              warmup=2, target_round_ms=200.0)
    return statistics.median(got["qat"]), statistics.median(got["fp32"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: check that it runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 10; quick 3)")
    ap.add_argument("--fp16", action="store_true", help="also time FP16 autocast (emulated on most CPUs)")
    ap.add_argument("--skip-amp", action="store_true")
    ap.add_argument("--skip-qat", action="store_true")
    ap.add_argument("--ptq-bits", default="8,4,3,2", help="weight widths to run PTQ for (default 8,4,3,2)")
    ap.add_argument("--qat-bits", default=None, help="weight widths to run QAT for (default 3,2; quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="QAT epochs (default 2; quick 1)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--distill", type=float, default=0.0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.ptq_bits = [int(b) for b in args.ptq_bits.split(",") if b]
    args.qat_bits = [int(b) for b in (args.qat_bits or ("2" if args.quick else "3,2")).split(",") if b]
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchslim import device as dev

    info = dev.describe(torch.device("cpu"))
    lines = ["## Training: mixed precision and quantization-aware training", "",
             f"{info.get('cpu')}, {info['threads']} threads, torch {info['torch']}, torchao {info['torchao']}"
             f"{' (--quick sizes)' if args.quick else ''}; `python benchmarks/training.py`."]
    raw: dict = {"machine": info}
    t0 = time.time()
    if not args.skip_amp:
        more, raw["amp"] = amp_section(args)
        lines += more
    if not args.skip_qat:
        more, raw["qat"] = qat_section(args)
        lines += more
    lines += ["", f"(ran in {time.time() - t0:.0f} s)"]
    print("\n".join(lines))
    if args.json:
        write_json(args.json, raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
