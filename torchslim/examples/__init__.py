"""torchslim's built-in real examples: trained models, real data, real task metrics.

`torchslim optimize` with no `--model` runs every entry of DEMOS. Each value is a
model spec ("module:factory") whose factory, called with no arguments, returns a
Workload with an `evaluate` that scores a candidate on held-out data:

- fashion-mnist-cnn: a small CNN trained here on Fashion-MNIST (cached after the
  first run); metric: test accuracy in percent.
- all-minilm-l6-v2: the all-MiniLM-L6-v2 sentence-embedding model; metric: accuracy
  of a linear sentiment probe on tweets, plus cosine similarity to the FP32 embeddings.

Modules are imported lazily (by spec), so `import torchslim.examples` is cheap and
needs neither the datasets nor transformers.
"""

DEMOS = {
    "fashion-mnist-cnn": "torchslim.examples.fashion_mnist:workload",
    "all-minilm-l6-v2": "torchslim.examples.minilm:workload",
}

__all__ = ["DEMOS"]
