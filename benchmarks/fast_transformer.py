"""fast_transformer on the real all-MiniLM-L6-v2 (batch 32, max length 128): time per call of the
Hugging Face model with eager attention, with stock SDPA attention, and with fast_transformer
(packed tokens, fused attention), in FP32 and in BF16 (cast), at several padding levels.

One process; every round times each model once, in a rotating order, after a warm-up; the table
shows medians. The ideal gain is padded tokens / real tokens (what skipping all padding work could
give if attention were free); "of ideal" is the measured gain over the eager model at the same
precision divided by the ideal gain.

    python benchmarks/fast_transformer.py            # ~3-5 minutes on 2 cores
    python benchmarks/fast_transformer.py --quick    # fewer rounds and cases
    python benchmarks/fast_transformer.py --threads 1
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

# (label, lengths low..high, inclusive, at max length 128; scaled for other --seq); the mean sets
# the padding fraction.
CASES = [
    ("0% padding", 128, 128),
    ("25% padding", 80, 112),
    ("50% padding", 48, 80),
    ("75% padding", 16, 48),
    ("uniform 16..128", 16, 128),
]


def make_batch(batch: int, seq: int, lo: int, hi: int, seed: int, left: bool = False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 29000, (batch, seq), generator=g)
    lens = torch.randint(lo, hi + 1, (batch,), generator=g).clamp(1, seq)
    mask = (torch.arange(seq)[None, :] < lens[:, None]).long()
    ids[:, 0] = 101
    if left:  # the same sentences, padding moved to the front
        order = torch.argsort(mask, dim=1, stable=True)
        ids, mask = torch.gather(ids, 1, order), torch.gather(mask, 1, order)
    return ids * mask, mask


def build_models(bf16: bool):
    import transformers

    from torchslim.examples import minilm
    from torchslim.inputs import Example
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques.base import Context
    from torchslim.techniques.fast_transformer import FastTransformerConfig
    from torchslim.techniques.low_precision import LowPrecisionConfig

    path = minilm.model_path()

    def hf(attn):
        enc = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn)
        return minilm.SentenceEmbedder(enc.float().eval()).eval()

    ids, mask = make_batch(2, 16, 8, 16, 0)
    ctx = lambda: Context(device=torch.device("cpu"), example=Example((ids, mask)))  # noqa: E731
    eager, sdpa = hf("eager"), hf("sdpa")
    fast_step, bf16_step = FastTransformerConfig(), LowPrecisionConfig("bf16", "cast")
    models = {
        "eager": eager,
        "sdpa": sdpa,
        "fast": apply(copy.deepcopy(sdpa), Recipe((fast_step,)), ctx()),
    }
    if bf16:
        models["eager bf16"] = apply(copy.deepcopy(eager), Recipe((bf16_step,)), ctx())
        models["sdpa bf16"] = apply(copy.deepcopy(sdpa), Recipe((bf16_step,)), ctx())
        models["fast bf16"] = apply(copy.deepcopy(sdpa), Recipe((fast_step, bf16_step)), ctx())
    return models


class Encoder(torch.nn.Module):
    """A MiniLM-shaped nn.TransformerEncoder (6 layers, width 384, 12 heads, feed-forward 1536) that
    takes (tokens, mask) like the BERT models, so the same batches feed both tables; returns the
    mean of the real tokens' outputs. nested=True builds it with PyTorch's nested-tensor fast path."""

    def __init__(self, nested: bool):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(30522, 384)
        layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=nested)

    def forward(self, ids, mask):
        pad = mask == 0
        h = self.encoder(self.embed(ids), src_key_padding_mask=pad)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h.nan_to_num(0.0) * m).sum(1) / m.sum(1)


def build_encoders(bf16: bool):
    """Stock nn.TransformerEncoder (its fused fast path, padded), with nested tensors, and packed by
    fast_transformer; FP32 and BF16 (cast)."""
    from torchslim.inputs import Example
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques.base import Context
    from torchslim.techniques.fast_transformer import FastTransformerConfig
    from torchslim.techniques.low_precision import LowPrecisionConfig

    ids, mask = make_batch(2, 16, 8, 16, 0)
    ctx = lambda: Context(device=torch.device("cpu"), example=Example((ids, mask)))  # noqa: E731
    dense, nested = Encoder(False).eval(), Encoder(True).eval()
    nested.load_state_dict(dense.state_dict())
    fast_step, bf16_step = FastTransformerConfig(), LowPrecisionConfig("bf16", "cast")
    models = {"stock": dense, "nested": nested, "fast": apply(copy.deepcopy(dense), Recipe((fast_step,)), ctx())}
    if bf16:
        models["stock bf16"] = apply(copy.deepcopy(dense), Recipe((bf16_step,)), ctx())
        models["nested bf16"] = apply(copy.deepcopy(nested), Recipe((bf16_step,)), ctx())
        models["fast bf16"] = apply(copy.deepcopy(dense), Recipe((fast_step, bf16_step)), ctx())
    return models


def encoder_table(args, cases, rounds, bf16) -> None:
    """The nn.TransformerEncoder comparison: stock fast path vs nested tensors vs fast_transformer."""
    import warnings

    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
    models = build_encoders(bf16)
    names = list(models)
    print(f"\nnn.TransformerEncoder (MiniLM-shaped, random weights), batch {args.batch}, max length {args.seq}, "
          f"medians of {rounds} interleaved rounds (ms)\n")
    cols = ["stock", "nested", "fast"] + (["stock bf16", "nested bf16", "fast bf16"] if bf16 else [])
    print("| case | ideal gain | " + " | ".join(cols) + " | nested vs stock | fast vs stock | fast vs nested |"
          + (" fast vs nested (bf16) |" if bf16 else "") + " max err |")
    print("|---|---|" + "---|" * len(cols) + "---|---|---|" + ("---|" if bf16 else "") + "---|")
    with torch.inference_mode():
        for ci, (label, lo, hi) in enumerate(cases):
            lo, hi = max(1, lo * args.seq // 128), max(1, hi * args.seq // 128)
            ids, mask = make_batch(args.batch, args.seq, lo, hi, seed=ci + 1)
            ref = models["stock"](ids, mask)
            err = max(float((models[n](ids, mask) - ref).abs().max()) for n in ("nested", "fast"))
            for m in models.values():
                m(ids, mask)
            times = {n: [] for n in names}
            for r in range(rounds):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    times[n].append(time_call(models[n], ids, mask))
            med = {n: statistics.median(v) for n, v in times.items()}
            line = (f"| {label} | {args.batch * args.seq / int(mask.sum()):.2f}x | " + " | ".join(f"{med[c]:.0f}" for c in cols)
                    + f" | {med['stock'] / med['nested']:.2f}x | {med['stock'] / med['fast']:.2f}x | {med['nested'] / med['fast']:.2f}x |")
            if bf16:
                line += f" {med['nested bf16'] / med['fast bf16']:.2f}x |"
            print(line + f" {err:.1e} |", flush=True)
    print("\nstock = nn.TransformerEncoder's own fused fast path on the padded batch (enable_nested_tensor=False); "
          "nested = the same with enable_nested_tensor=True (padding dropped through nested tensors); fast = "
          "torchslim fast_transformer (packed tokens, length buckets, fused SDPA). max err = max |x - stock| of the "
          "FP32 embeddings.")


def time_call(model, ids, mask) -> float:
    t0 = time.perf_counter()
    model(ids, mask)
    return (time.perf_counter() - t0) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds, three cases")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 5, quick 2)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-bf16", action="store_true", help="FP32 only")
    ap.add_argument("--no-encoder", action="store_true", help="skip the nn.TransformerEncoder / nested-tensor table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    cases = [CASES[0], CASES[2], CASES[4]] if args.quick else CASES
    bf16 = not args.no_bf16
    if bf16:
        from torchslim import device as dev

        if not dev.supports_bf16(torch.device("cpu")):
            print("note: this CPU has no fast BF16; BF16 columns skipped", file=sys.stderr)
            bf16 = False

    t_start = time.perf_counter()
    models = build_models(bf16)
    names = list(models)
    rows = []
    with torch.inference_mode():
        for ci, (label, lo, hi) in enumerate(cases):
            seq = args.seq
            lo, hi = max(1, lo * seq // 128), max(1, hi * seq // 128)  # the cases are written for length 128
            ids, mask = make_batch(args.batch, seq, lo, hi, seed=ci + 1)
            # correctness first: the packed model's embeddings vs stock SDPA (and left padding)
            ref = models["sdpa"](ids, mask)
            out = models["fast"](ids, mask)
            left_ids, left_mask = make_batch(args.batch, seq, lo, hi, seed=ci + 1, left=True)
            err_left = (models["sdpa"](left_ids, left_mask) - models["fast"](left_ids, left_mask)).abs().max()
            err = max(float((ref - out).abs().max()), float(err_left))
            for m in models.values():  # warm-up
                m(ids, mask)
            times = {n: [] for n in names}
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    times[n].append(time_call(models[n], ids, mask))
            med = {n: statistics.median(v) for n, v in times.items()}
            real = int(mask.sum())
            rows.append((label, real, args.batch * seq, med, err))
            print(f"{label}: " + ", ".join(f"{n} {med[n]:.0f} ms" for n in names) + f" (max |fast - sdpa| {err:.1e})",
                  file=sys.stderr, flush=True)

    print(f"\nall-MiniLM-L6-v2, batch {args.batch}, max length {args.seq}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, medians of {rounds} interleaved rounds (ms)\n")
    head = "| case | real tokens | ideal gain | eager | sdpa | fast | fast vs eager | of ideal | fast vs sdpa |"
    sep = "|---|---|---|---|---|---|---|---|---|"
    if bf16:
        head += " eager bf16 | sdpa bf16 | fast bf16 | fast vs eager (bf16) | of ideal (bf16) | fast vs sdpa (bf16) | max err |"
        sep += "---|---|---|---|---|---|---|"
    else:
        head += " max err |"
        sep += "---|"
    print(head)
    print(sep)
    for label, real, padded, med, err in rows:
        ideal = padded / real
        g = med["eager"] / med["fast"]
        line = (f"| {label} | {real}/{padded} | {ideal:.2f}x | {med['eager']:.0f} | {med['sdpa']:.0f} | {med['fast']:.0f} | "
                f"{g:.2f}x | {100 * g / ideal:.0f}% | {med['sdpa'] / med['fast']:.2f}x |")
        if bf16:
            gb = med["eager bf16"] / med["fast bf16"]
            line += (f" {med['eager bf16']:.0f} | {med['sdpa bf16']:.0f} | {med['fast bf16']:.0f} | {gb:.2f}x | "
                     f"{100 * gb / ideal:.0f}% | {med['sdpa bf16'] / med['fast bf16']:.2f}x |")
        line += f" {err:.1e} |"
        print(line)
    print("\nideal gain = padded tokens / real tokens; of ideal = (eager / fast) / ideal gain at the same precision "
          "(target >= 90%); at 0% padding fast should be no slower than sdpa (>= 1.00x, within noise). "
          "Random token ids; lengths uniform in each case's range; max err = max |fast - sdpa| of the embeddings "
          "(right and left padding). On a shared machine use --threads 1: parallel regions stall when other "
          "processes hold the cores, and fast_transformer runs more (smaller) ops than the padded model.")
    if not args.no_encoder:
        encoder_table(args, cases, rounds, bf16)
    print(f"(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
