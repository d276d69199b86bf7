"""Every model format loads, and every bad input gets one clear SlimError."""
import os

import pytest
import torch

import tiny_models
from torchslim import SlimError, load_model
from torchslim.workload import Workload

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_models.py")


def _same_outputs(wl: Workload, model):
    with torch.no_grad():
        return torch.allclose(wl.example(wl.model), wl.example(model), atol=1e-6)


def test_file_factory_with_input_shape():
    wl = load_model(f"{TINY}:cnn", input_shape="2x3x16x16")
    assert type(wl.model).__name__ == "CNN" and not wl.model.training  # imported from the file, a fresh module
    assert wl.example.args[0].shape == (2, 3, 16, 16)
    assert wl.spec == f"{TINY}:cnn"


def test_module_factory_returning_model_and_inputs():
    wl = load_model("tiny_models:cnn_with_inputs")
    assert wl.example.args[0].shape == (2, 3, 16, 16)


def test_integer_inputs_from_dtype():
    wl = load_model(f"{TINY}:mlp", input_shape="4x64,4x3", dtype="float32,int64")
    a, b = wl.example.args
    assert a.dtype == torch.float32 and b.dtype == torch.int64


def test_weights_are_loaded_safely(tmp_path):
    src = tiny_models.cnn()
    for p in src.parameters():
        p.data.add_(1.0)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    wl = load_model(f"{TINY}:cnn", input_shape="1x3x16x16", weights=str(path))
    assert torch.equal(wl.model.head[1].weight, src.head[1].weight)


def test_torchscript_file(tmp_path):
    model, x = tiny_models.cnn(), torch.randn(2, 3, 16, 16)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(model, x), path)
    wl = load_model(str(path), input_shape="2x3x16x16")
    assert isinstance(wl.model, torch.jit.ScriptModule)
    assert _same_outputs(wl, model)


def test_torch_export_file_brings_its_example_inputs(tmp_path):
    model, x = tiny_models.cnn(), torch.randn(2, 3, 16, 16)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    wl = load_model(str(path))
    assert wl.example.args[0].shape == (2, 3, 16, 16)
    assert _same_outputs(wl, model)


def test_hugging_face_folder_offline(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    wl = load_model(f"hf:{tmp_path}", input_shape="2x16")
    ids, mask = wl.example.args
    assert ids.shape == (2, 16) and int(ids.max()) < 100 and bool(mask.all())
    with torch.no_grad():
        assert wl.example(wl.model).shape == (2, 16, 32)


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("no_such_thing", "unknown model spec"),
    ("missing/model.pt", "does not exist"),
    ("missing_file.py:build", "does not exist"),
    ("no_such_module_xyz:build", "cannot import module"),
    (f"{TINY}:nope", "has no function 'nope'"),
    (f"{TINY}:broken_factory", "raised ValueError: cannot build"),
    (f"{TINY}:not_a_model", "returned int"),
    (TINY, "no factory was named"),
])
def test_bad_specs_fail_clearly(spec, message):
    with pytest.raises(SlimError, match=message) as e:
        load_model(spec, input_shape="1x3x16x16")
    assert e.value.fix  # every error says what to do


def test_missing_inputs_and_bad_shapes():
    with pytest.raises(SlimError, match="no example inputs"):
        load_model(f"{TINY}:cnn")
    with pytest.raises(SlimError, match="cannot read input shape"):
        load_model(f"{TINY}:cnn", input_shape="2by3")
    with pytest.raises(SlimError, match="zero dimension"):
        load_model(f"{TINY}:cnn", input_shape="0x3x16x16")
    with pytest.raises(SlimError, match="unknown dtype"):
        load_model(f"{TINY}:cnn", input_shape="1x3x16x16", dtype="float7")


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tiny_models.cnn(), path)
    with pytest.raises(SlimError, match="pickled Python objects") as e:
        load_model(str(path), input_shape="1x3x16x16")
    assert "--trust-pickle" in e.value.fix
    wl = load_model(str(path), input_shape="1x3x16x16", trust_pickle=True)
    assert isinstance(wl.model, tiny_models.CNN)


def test_state_dict_passed_as_model_says_what_to_do(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(tiny_models.cnn().state_dict(), path)
    with pytest.raises(SlimError, match="state dict") as e:
        load_model(str(path))
    assert "--weights" in e.value.fix


def test_mismatched_weights_are_refused(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(tiny_models.mlp().state_dict(), path)
    with pytest.raises(SlimError, match="do not match the model"):
        load_model(f"{TINY}:cnn", input_shape="1x3x16x16", weights=str(path))


def test_missing_hf_folder():
    with pytest.raises(SlimError, match="does not exist"):
        load_model("hf:/no/such/folder")
