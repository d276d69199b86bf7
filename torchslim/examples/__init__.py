"""torchslim's built-in real examples: trained models, real data, real task metrics.

`torchslim optimize` with no `--model` runs every entry of DEMOS. Each value is a
model spec ("module:factory") whose factory, called with no arguments, returns a
Workload with an `evaluate` that scores a candidate on held-out data:

- fashion-mnist-cnn: a small CNN trained on Fashion-MNIST (its weights ship under
  weights/); metric: test accuracy in percent.
- all-minilm-l6-v2: the all-MiniLM-L6-v2 sentence-embedding model; metric: accuracy
  of a linear sentiment probe on tweets, plus cosine similarity to the FP32 embeddings.

Modules are imported lazily (by spec), so `import torchslim.examples` is cheap and
needs neither the datasets nor transformers.
"""

import os

# Trained state the examples ship (the CNN's weights, MiniLM's fitted probe), made by their own
# train()/fit_probe() so that every host judges the same model without minutes of training.
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def retrain_requested() -> bool:
    """TORCHSLIM_RETRAIN=1: make the examples' trained state on this machine instead of loading WEIGHTS."""
    return os.environ.get("TORCHSLIM_RETRAIN", "") not in ("", "0")


DEMOS = {
    "fashion-mnist-cnn": "torchslim.examples.fashion_mnist:workload",
    "all-minilm-l6-v2": "torchslim.examples.minilm:workload",
}

__all__ = ["DEMOS", "WEIGHTS", "retrain_requested"]
