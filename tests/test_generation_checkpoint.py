"""The torch-native generation artifact as a checkpoint other engines load (issue 26 item 5): the
hf-torchao/ folder (save_pretrained with its TorchAoConfig) reloads in plain transformers and gives
the greedy tokens torchslim saved as its reference."""
import copy
import json

import pytest
import torch

from tiny_lm import build_tiny_lm

from torchslim.generation.load import load_causal_lm
from torchslim.generation.search import prompt_ids


def test_int8_weight_only_folder_reloads_in_transformers_with_the_same_greedy_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    from torchslim.generation.artifacts import save
    from torchslim.recipes import Recipe, apply
    from torchslim.techniques import Context
    from torchslim.techniques.lm_weights import LMWeightsConfig

    lm = load_causal_lm("hf:" + build_tiny_lm(str(tmp_path / "tiny")))
    recipe = Recipe((LMWeightsConfig("bf16", quant="int8"),))
    model = apply(copy.deepcopy(lm.model), recipe, Context(device=torch.device("cpu"), example=None))
    ids = prompt_ids(lm.tokenizer, ["The history of the printing press begins in"], 12, 1)
    out = tmp_path / "model"
    save(str(out), lm, recipe, model, [ids], 8)
    manifest = json.loads((out / "torchslim.json").read_text())
    assert manifest["hf_torchao"]["folder"] == "hf-torchao", manifest["hf_torchao"]
    ref = torch.load(out / "reference.pt")["tokens"][0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out / "hf-torchao"), local_files_only=True).eval()
    w = hf.model.layers[0].mlp.down_proj.weight
    assert type(w).__name__ != "Parameter" or type(w.data).__name__ != "Tensor", type(w)  # torchao's INT8 tensor, not floats
    with torch.no_grad():
        got = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(got, ref.reshape(got.shape)), (got, ref)
