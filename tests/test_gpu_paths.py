"""CUDA-only techniques (FP8, CUDA graphs): refused with a reason here, exact where a GPU exists.

The GPU halves are marked `cuda` (skipped without a GPU); they and benchmarks/gpu.py ran on an
H100 (see BENCHMARKS.md, GPU section)."""
import copy

import pytest
import torch
import torch.nn as nn

from torchslim.fidelity import compare
from torchslim.inputs import Example
from torchslim.recipes import Recipe, apply, candidates
from torchslim.techniques import AoFloat8Config, CompileConfig, Context, LowPrecisionConfig, config_from_dict, handler


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 10)).eval()


def test_fp8_is_refused_on_cpu_with_the_reason():
    ctx = Context(torch.device("cpu"), Example((torch.randn(4, 256),)))
    why = handler(AoFloat8Config()).applies(mlp(), AoFloat8Config(), ctx)
    assert why and "compute capability 8.9" in why


def test_cuda_only_recipes_are_not_offered_on_cpu():
    names = [r.name for r in candidates(torch.device("cpu"))]
    assert not any("fp8" in n or "cudagraphs" in n for n in names)
    assert "compile" in names


def test_cudagraph_compile_config_round_trips_and_is_named():
    cfg = CompileConfig(mode="reduce-overhead")
    assert cfg.label() == "compile-cudagraphs"
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(AoFloat8Config(skip=("head",)).to_dict()) == AoFloat8Config(skip=("head",))


def test_gpu_benchmark_writes_only_between_its_markers(tmp_path):
    from benchmarks.gpu import BEGIN, END, write_section

    path = tmp_path / "B.md"
    path.write_text("# head\n\nkeep me\n")
    write_section(str(path), "table 1")
    write_section(str(path), "table 2")
    text = path.read_text()
    assert text.startswith("# head\n\nkeep me\n") and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "table 2" in text and "table 1" not in text


@pytest.mark.cuda
def test_fp8_keeps_outputs_on_gpu():
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs FP8 tensor cores")
    model, x = mlp().to(dev), torch.randn(64, 256, device=dev)
    ctx = Context(dev, Example((x,)))
    fp8 = apply(copy.deepcopy(model), Recipe((AoFloat8Config(), CompileConfig())), ctx)
    with torch.no_grad():
        fid = compare(model(x), fp8(x))
    assert fid.min_cosine >= 0.995 and fid.top1_agreement >= 0.95


@pytest.mark.cuda
def test_cudagraph_outputs_survive_the_next_call():
    dev = torch.device("cuda")
    model = mlp().to(dev)
    ctx = Context(dev, Example((torch.randn(8, 256, device=dev),)))
    g = apply(copy.deepcopy(model), Recipe((LowPrecisionConfig("fp16", "cast"), CompileConfig(mode="reduce-overhead"))), ctx)
    a, b = torch.randn(8, 256, device=dev), torch.randn(8, 256, device=dev)
    with torch.no_grad():
        for _ in range(3):  # warm-up, recording, replay
            out_a = g(a)
        out_b = g(b)
        assert compare(model(a), out_a).min_cosine >= 0.999  # not overwritten by the call on b
        assert compare(model(b), out_b).min_cosine >= 0.999
