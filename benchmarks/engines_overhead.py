"""Per-call cost of torchslim's engine wrapper: the wrapped module (torch tensors in and out) against
the engine called directly with pre-made numpy inputs, interleaved in one process.

    PYTHONPATH=. python benchmarks/engines_overhead.py [--batch 1] [--rounds 21] [--threads 2]

Prints, per engine, the min and median microseconds per call and direct/wrapped (1.0: no overhead).
Model: the Fashion-MNIST demo CNN (small: the wrapper's fixed cost shows most there)."""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from torchslim import Example, engines
    from torchslim.examples import fashion_mnist
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques import Context, OpenVinoConfig, OrtStaticInt8Config

    torch.set_num_threads(args.threads)
    model = fashion_mnist.pretrained().eval()
    x = torch.randn(args.batch, 1, 28, 28)
    ex = Example((x,))
    calib = [Example((torch.randn(args.batch, 1, 28, 28),)) for _ in range(4)]
    ctx = Context(device=torch.device("cpu"), example=ex, calibration=lambda: calib)
    for cfg, extra in ((OrtStaticInt8Config(), "onnxruntime"), (OpenVinoConfig(), "openvino")):
        if engines.missing(extra):
            print(f"{cfg.label()}: skipped ({engines.missing(extra)})")
            continue
        wrapped = apply(copy.deepcopy(model), Recipe((cfg,)), ctx)
        a = x.numpy()
        if isinstance(wrapped, engines.OrtModule):
            sess, feed, outs = wrapped.runner, {wrapped.inputs[0]: a}, wrapped.outputs
            direct = lambda: sess.run(outs, feed)  # noqa: E731
        else:
            req = wrapped.runner
            direct = lambda: req.infer([a], share_inputs=True)  # noqa: E731
        fns = {"direct": direct, "wrapped": lambda: wrapped(x)}
        got: dict[str, list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for fn in fns.values():
                for _ in range(30):
                    fn()
            for r in range(args.rounds):
                for k in (list(fns) if r % 2 else list(fns)[::-1]):
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        fns[k]()
                    got[k].append((time.perf_counter() - t0) / args.calls * 1e6)
        mins = {k: min(v) for k, v in got.items()}
        meds = {k: sorted(v)[len(v) // 2] for k, v in got.items()}
        print(f"{cfg.label()} batch {args.batch}: direct {mins['direct']:.1f} us (median {meds['direct']:.1f}), wrapped "
              f"{mins['wrapped']:.1f} us (median {meds['wrapped']:.1f}); direct/wrapped min {mins['direct'] / mins['wrapped']:.3f}, "
              f"median {meds['direct'] / meds['wrapped']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
