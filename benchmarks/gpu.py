"""The peer comparison on an NVIDIA GPU (H100/H200): one process, under 8 minutes end to end.

For each model and batch: FP32 eager (the baseline), TF32, FP16/BF16 autocast and cast, channels-last,
torch.compile (Inductor with freezing) with and without CUDA graphs, the fast_transformer path, and
torchao INT8 dynamic, INT8 weight-only and FP8 (where the GPU has FP8 tensor cores), each prepared
through torchslim's own techniques (the same code `torchslim optimize --device cuda` runs). Timing is
interleaved round-robin after warm-up (compilation included in "prep s"), each call synchronized;
fidelity is the worst per-sample cosine and top-1 agreement against FP32 eager. "torchslim picks"
is the fastest recipe that keeps worst-sample cosine >= 0.99, the rule optimize applies.

The models are the CPU suite's shapes with seeded random weights (no downloads on the GPU box): the
Fashion-MNIST CNN (the trained checkpoint when $TORCHSLIM_CACHE holds it), a ResNet-18-shaped CNN at
224x224, a MiniLM-shaped BERT (all-MiniLM-L6-v2's config) at sequence 128, dense at batch 1 and
padded (lengths uniform 16..128) at batch 32, and a 2-layer LSTM (hidden 512).

    python benchmarks/gpu.py --out DIR [--write BENCHMARKS.md] [--budget-s 420]
    python benchmarks/gpu.py --device cpu --quick      # a smoke run of the script itself
Rows not reached within --budget-s are listed as skipped; every row is written as it finishes.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from benchmarks.models import LSTMModel, ResNet18, _seeded  # noqa: E402
from torchslim.fidelity import compare  # noqa: E402
from torchslim.fileio import write_text as atomic_write_text  # noqa: E402
from torchslim.inputs import Example  # noqa: E402
from torchslim.measure import interleaved, serialized_bytes  # noqa: E402
from torchslim.recipes import Recipe, apply  # noqa: E402
from torchslim.techniques import (  # noqa: E402
    AoFloat8Config, AoInt8DynamicConfig, ChannelsLastConfig, CompileConfig, Context, FastTransformerConfig,
    InferenceModeConfig, LowPrecisionConfig, WeightOnlyConfig,
)

BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
MIN_COSINE = 0.99


# ---------------------------------------------------------------------------- models

def fashion_cnn():
    from torchslim.examples.fashion_mnist import FashionCNN, checkpoint_path

    torch.manual_seed(0)
    model, note = FashionCNN().eval(), "random weights"
    path = checkpoint_path()
    if os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        note = "trained weights"
    return model, note


class MeanPooled(nn.Module):
    """A sentence embedding, as all-MiniLM-L6-v2 is used: the mean of the real tokens' last hidden
    states (padding positions carry no meaning, so they are not compared)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)


def minilm_shaped():
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, max_position_embeddings=512)
    torch.manual_seed(0)
    return MeanPooled(transformers.BertModel(cfg, add_pooling_layer=False).eval()), "random weights, all-MiniLM-L6-v2 config"


def padded_batch(batch: int, seq: int, lo: int, hi: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return Example((ids * mask, mask))


def cases(quick: bool):
    """(name, model factory, example, kind) in the order they are run (most telling first)."""
    g = torch.Generator().manual_seed(1)
    img = lambda b, c, s: Example((torch.randn(b, c, s, s, generator=g),))  # noqa: E731
    big = 4 if quick else 1
    out = [
        ("MiniLM-shaped b32 padded 16..128", minilm_shaped, padded_batch(32 // big, 128, 16, 128), "transformer"),
        ("MiniLM-shaped b1 seq128", minilm_shaped, padded_batch(1, 128, 128, 128), "transformer"),
        ("ResNet-18-shaped b1", lambda: (_seeded(ResNet18), "random weights"), img(1, 3, 224 // big), "cnn"),
        ("ResNet-18-shaped b64", lambda: (_seeded(ResNet18), "random weights"), img(64 // big, 3, 224 // big), "cnn"),
        ("Fashion CNN b1", fashion_cnn, img(1, 1, 28), "cnn"),
        ("Fashion CNN b1024", fashion_cnn, img(1024 // big, 1, 28), "cnn"),
        ("LSTM b1", lambda: (_seeded(LSTMModel), "random weights"), Example((torch.randn(1, 32, 64, generator=g),)), "rnn"),
        ("LSTM b64", lambda: (_seeded(LSTMModel), "random weights"), Example((torch.randn(64, 32, 64, generator=g),)), "rnn"),
    ]
    return out[:4] if quick else out


# ---------------------------------------------------------------------------- methods

class TF32(nn.Module):
    """FP32 model with TF32 tensor-core matmuls/convolutions, switched on for the call only."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *a, **k):
        m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return self.inner(*a, **k)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = m, c


def methods(kind: str, device: torch.device) -> list[tuple[str, object]]:
    """(label, Recipe or callable model -> model), cheapest first, compiled ones last."""
    im = lambda *s: Recipe((*s, InferenceModeConfig()))  # noqa: E731
    cast = lambda d: LowPrecisionConfig(d, "cast")  # noqa: E731
    comp, graphs = CompileConfig(), CompileConfig(mode="reduce-overhead")
    cl = ChannelsLastConfig()
    low = ["fp16", "bf16"] if device.type == "cuda" else ["bf16"]
    out: list = [("fp32 eager", im())]
    if device.type == "cuda":
        out.append(("tf32", lambda m: TF32(m)))
    out += [(f"{d}-autocast", im(LowPrecisionConfig(d, "autocast"))) for d in low]
    out += [(f"{d}-cast", im(cast(d))) for d in low]
    if kind == "cnn":
        out += [(f"channels_last+{d}-cast", im(cl, cast(d))) for d in low]
    if kind == "transformer":
        ft = FastTransformerConfig()
        out += [("fast-transformer", im(ft))] + [(f"fast-transformer+{d}-cast", im(ft, cast(d))) for d in low]
    out += [("compile", im(comp))]
    out += [(f"{d}-cast+compile", im(cast(d), comp)) for d in low]
    if kind == "cnn":
        out += [(f"channels_last+{low[0]}-cast+compile", im(cl, cast(low[0]), comp))]
    if device.type == "cuda":
        out += [(f"{d}-cast+compile-cudagraphs", im(cast(d), graphs)) for d in low]
    if kind != "cnn" or device.type == "cpu":
        out += [("torchao int8-dynamic+compile", im(AoInt8DynamicConfig(), comp)),
                ("torchao int8-weight-only+compile", im(WeightOnlyConfig(bits=8, activation_dtype="bf16"), comp))]
        if device.type == "cuda":
            out += [("torchao fp8-dynamic+compile", im(AoFloat8Config(), comp))]
    return out


# ---------------------------------------------------------------------------- running

def run_case(name, factory, example, kind, device, deadline, rounds, log):
    # Each case compiles the same forward code many times: start every case from empty Dynamo
    # caches (and raise the recompile limits in main) so no compiled row silently runs eager.
    torch._dynamo.reset()
    model, weights = factory()
    model = model.to(device).eval()
    example = example.to(device)
    ctx = Context(device=device, example=example)
    with torch.inference_mode():
        ref = example(model)
    prepared, rows = {}, []
    for label, how in methods(kind, device):
        row = {"case": name, "method": label, "weights": weights}
        if time.monotonic() > deadline:
            rows.append({**row, "error": "skipped: time budget"})
            continue
        start = time.perf_counter()
        try:
            m = apply(copy.deepcopy(model), how, Context(device=device, example=example)) if isinstance(how, Recipe) else how(copy.deepcopy(model))
            with torch.inference_mode():
                out = example(m)  # compilation happens here
                out = example(m)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["prep_s"] = time.perf_counter() - start
            fid = compare(ref, out)
            row.update(cosine=fid.min_cosine, top1=fid.top1_agreement)
            try:
                row["size_mb"] = serialized_bytes(m) / 1e6
            except Exception:  # noqa: BLE001 - compiled/quantized wrappers may not serialize
                row["size_mb"] = None
            prepared[label] = m
        except Exception as e:  # noqa: BLE001 - a failure is a row, not a crash
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows.append(row)
        log(row)
    if prepared:
        fns = {k: (lambda m=m: example(m)) for k, m in prepared.items()}
        with torch.inference_mode():
            samples = interleaved(fns, rounds=rounds, target_round_ms=25.0, warmup=3, device=device)
        base = statistics.median(samples["fp32 eager"]) if "fp32 eager" in samples else None
        for row in rows:
            if row["method"] in samples:
                med = statistics.median(samples[row["method"]])
                row["median_ms"] = med
                row["speedup"] = base / med if base else None
    ok = [r for r in rows if "median_ms" in r and r["method"] != "fp32 eager" and (r.get("cosine") or 0) >= MIN_COSINE]
    best = min(ok, key=lambda r: r["median_ms"], default=None)
    for r in rows:
        r["picked"] = best is not None and r is best
    return rows


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def render(rows, meta) -> str:
    lines = [f"GPU: **{meta['gpu']}**, torch {meta['torch']}, torchao {meta['torchao']}, transformers {meta['transformers']}, "
             f"CUDA {meta['cuda']}, {meta['date']}. Script: `python benchmarks/gpu.py` ({meta['wall_s']:.0f} s). "
             "Weights are seeded random unless noted; ratios are against FP32 eager in the same process; "
             "** marks what torchslim picks (fastest with worst-sample cosine >= 0.99).", ""]
    for case in dict.fromkeys(r["case"] for r in rows):
        lines += [f"**{case}**", "", "| method | median ms | vs FP32 | worst cosine | top-1 agr. | size MB | prep s | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["case"] == case):
            name = f"**{r['method']}**" if r.get("picked") else r["method"]
            lines.append(f"| {name} | {fmt(r.get('median_ms'), '.3f')} | {fmt(r.get('speedup'), '.2f')}{'x' if r.get('speedup') else ''} | "
                         f"{fmt(r.get('cosine'), '.5f')} | {fmt(r.get('top1'), '.3f')} | {fmt(r.get('size_mb'), '.1f')} | "
                         f"{fmt(r.get('prep_s'), '.1f')} | {r.get('error', '')} |")
        lines.append("")
    return "\n".join(lines)


def write_section(path: str, body: str) -> None:
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## GPU (NVIDIA)\n\n" + block + "\n"
    atomic_write_text(path, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu-out")
    ap.add_argument("--write", help="BENCHMARKS.md to update between the gpu markers")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop preparing new rows after this many seconds")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated substrings of case names to run")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA GPU visible; use --device cpu for a smoke run", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    try:
        import torchao
        ao = torchao.__version__
    except Exception as e:  # noqa: BLE001
        ao = f"not importable ({type(e).__name__})"
    import transformers

    meta = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "torchao": ao, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "date": datetime.date.today().isoformat(), "python": platform.python_version()}
    rows: list[dict] = []
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096

    def log(row):
        print(json.dumps(row), flush=True)

    for name, factory, example, kind in cases(args.quick):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        if time.monotonic() > deadline:
            rows.append({"case": name, "method": "(all)", "error": "skipped: time budget"})
            continue
        print(f"== {name} ({time.monotonic() - t0:.0f} s)", flush=True)
        try:
            rows += run_case(name, factory, example, kind, device, deadline, args.rounds, log)
        except Exception as e:  # noqa: BLE001
            rows.append({"case": name, "method": "(all)", "error": f"{type(e).__name__}: {str(e)[:200]}"})
        meta["wall_s"] = time.monotonic() - t0
        atomic_write_text(os.path.join(args.out, "gpu.json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
        atomic_write_text(os.path.join(args.out, "gpu.md"), render(rows, meta))
    meta["wall_s"] = time.monotonic() - t0
    body = render(rows, meta)
    atomic_write_text(os.path.join(args.out, "gpu.md"), body)
    print(body)
    if args.write:
        write_section(args.write, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
