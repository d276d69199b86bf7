"""Save the chosen generation recipe and load it back to a model whose greedy generate() gives the
same tokens (checked on load against reference.pt)."""
from __future__ import annotations

import datetime
import os
import textwrap

import torch

from ..errors import SlimError, first_line
from ..fileio import atomic_write, write_json
from ..recipes import Recipe, apply
from ..techniques import Context
from .runner import timed_generate

# Folder layout: torchslim.json (task, recipe, spec), base/ (the FP32 Hugging Face folder with its
# tokenizer, self-contained also for GGUF sources), reference.pt (prompts and the greedy tokens of the
# optimized model at optimize time) and, for torchao recipes, hf-torchao/ (save_pretrained with its
# TorchAoConfig: transformers reloads it directly).
MANIFEST = "torchslim.json"
FORMAT_VERSION = 1


def save(folder: str, lm, recipe: Recipe, optimized, prompts: list[torch.Tensor], new_tokens: int) -> str:
    from ..version import __version__
    from ..quant.common import quiet

    os.makedirs(folder, exist_ok=True)
    if not isinstance(optimized, torch.nn.Module):  # an engine's proxy (llama.cpp): its file, not the torch weights
        with quiet():
            lm.tokenizer.save_pretrained(os.path.join(folder, "base"))
        return optimized.save(folder, {
            "format_version": FORMAT_VERSION, "task": "text-generation", "torchslim": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "spec": lm.spec,
            "source": lm.source, "recipe": [], "recipe_name": getattr(optimized, "name", "engine")}, prompts, new_tokens)
    with quiet():
        lm.model.save_pretrained(os.path.join(folder, "base"))
        lm.tokenizer.save_pretrained(os.path.join(folder, "base"))
    gen = timed_generate(optimized)
    ref = {"prompts": [p.cpu() for p in prompts], "new_tokens": new_tokens,
           "tokens": [gen(p, new_tokens).tokens.cpu() for p in prompts]}
    atomic_write(os.path.join(folder, "reference.pt"), lambda f: torch.save(ref, f))
    hf = save_torchao_folder(os.path.join(folder, "hf-torchao"), lm, recipe)
    write_json(os.path.join(folder, MANIFEST), {
        "format_version": FORMAT_VERSION, "task": "text-generation", "torchslim": __version__, "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": lm.spec, "source": lm.source, "recipe": recipe.to_list(), "recipe_name": recipe.name,
        "hf_torchao": hf,
        # the base's precision (BF16 where the memory plan found FP32 does not fit): reloaded in it
        "base_dtype": "bf16" if next(lm.model.parameters()).dtype == torch.bfloat16 else "fp32",
    })
    return folder


def save_torchao_folder(folder: str, lm, recipe: Recipe) -> dict | None:
    """For a torchao weight recipe: a Hugging Face folder quantized through TorchAoConfig, which
    transformers.from_pretrained reloads as it is. None where the recipe has no torchao step;
    {"error": ...} where saving fails (the torchslim artifact is unaffected)."""
    from ..techniques.lm_weights import LMWeightsConfig

    step = next((s for s in recipe.steps if isinstance(s, LMWeightsConfig) and s.quant != "none"), None)
    if step is None or step.quant in ("fp16", "int8-sq") or (step.quant == "int4" and step.dtype == "fp32"):
        return None  # no torchao config: FP16 weights, fbgemm INT8, or INT4 in an FP32 model (its BF16 kernel casts are torchslim's hooks)
    try:
        import transformers

        from ..quant.common import quiet

        with quiet():
            qcfg = transformers.TorchAoConfig(_torchao_config(step))
            model = transformers.AutoModelForCausalLM.from_pretrained(
                lm.folder, dtype=torch.bfloat16 if step.dtype == "bf16" else torch.float32,
                quantization_config=qcfg, local_files_only=True)
            model.save_pretrained(folder, safe_serialization=False)
            lm.tokenizer.save_pretrained(folder)
        return {"folder": "hf-torchao", "config": type(qcfg.quant_type).__name__,
                "loads_in": "transformers AutoModelForCausalLM.from_pretrained (checked for INT8 weight-only: same greedy "
                            "tokens); vLLM and SGLang load torchao checkpoints of the configs they support (not run here)"}
    except Exception as e:  # noqa: BLE001 - optional extra output (INT4's CPU layout, Int4OpaqueTensor, does not serialize)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return {"error": f"{type(e).__name__}: {first_line(e)}"}


def _torchao_config(step):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if step.quant == "int4":
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=step.group_size)
    if step.quant == "int8":
        return Int8WeightOnlyConfig()
    return Int8DynamicActivationInt8WeightConfig()


def is_generation_folder(folder: str) -> bool:
    import json

    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("task") == "text-generation"


def load(folder: str, device: str = "cpu", verify: bool = True):
    """The saved causal LM with its recipe applied (a GreedyLM for static-cache recipes: its greedy
    generate() is the lean loop). Its tokenizer: transformers.AutoTokenizer.from_pretrained(folder + '/base')."""
    import json

    from .load import load_causal_lm

    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SlimError(f"'{folder}' was written by a newer torchslim ({manifest.get('torchslim')})", "upgrade torchslim")
    if manifest.get("engine"):  # a GGUF served by llama.cpp's worker (engines/llamacpp.py)
        from ..engines.llamacpp import load_folder

        return load_folder(folder, manifest, verify=verify)
    lm = load_causal_lm("hf:" + os.path.join(folder, "base"), dtype=manifest.get("base_dtype", "fp32"))
    dev = torch.device(device)
    from .quality import calibration

    # read only by recipes that calibrate: the same text as at optimize time, the same smoothing, the same tokens
    model = apply(lm.model.to(dev), Recipe.from_list(manifest["recipe"]),
                  Context(device=dev, example=None, calibration=lambda: calibration(lm.tokenizer, device=dev)))
    ref_path = os.path.join(folder, "reference.pt")
    if verify and os.path.isfile(ref_path):
        ref = torch.load(ref_path, weights_only=True)
        gen = timed_generate(model)
        for p, t in zip(ref["prompts"], ref["tokens"]):
            got = gen(p.to(dev), ref["new_tokens"]).tokens.cpu()
            if not torch.equal(got, t):
                same = float((got == t).float().mean())
                raise SlimError(f"the reloaded '{manifest['recipe_name']}' model does not reproduce its saved greedy tokens "
                                f"({same:.0%} identical)", "the environment differs from where it was saved; re-run torchslim optimize here")
    return model


def reproduce_code(artifact: str, config) -> str:
    """reproduce.py's text: reload the saved `artifact` and generate with it."""
    code = f'''\
        """Reload the chosen generation recipe and generate greedily (written by torchslim optimize)."""
        import time

        import torch
        import transformers

        import torchslim

        torch.set_num_threads({config.threads or torch.get_num_threads()})
        model = torchslim.load({os.path.abspath(artifact)!r})  # checks it reproduces the saved greedy tokens
        tok = transformers.AutoTokenizer.from_pretrained({os.path.join(os.path.abspath(artifact), "base")!r})
        ids = tok("The history of the printing press begins in", return_tensors="pt").input_ids
        for _ in range(2):  # the first call compiles
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens={config.new_tokens}, do_sample=False)
            dt = time.perf_counter() - t0
        print(tok.decode(out[0, ids.shape[1]:]))
        print(f"{{out.shape[1] - ids.shape[1]}} tokens in {{dt:.2f}} s ({{(out.shape[1] - ids.shape[1]) / dt:.1f}} tokens/s incl. the prompt pass)")
        '''
    return textwrap.dedent(code)
