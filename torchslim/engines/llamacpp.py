"""llama.cpp as a generation engine: a GGUF served by a worker process (`llamacpp_worker.py`, run by
path) that this side drives over JSON lines, so a native crash in llama.cpp fails one candidate and
never the search. `LlamaCppLM` is the proxy a generation search times and judges like a torch model
(`generate_timed` returns a GenTrace with the worker's own per-token times; `perplexity` on the same
token ids); `quantize` writes requantized GGUFs (cached); `save_folder`/`load_folder` keep the
chosen GGUF with its serving lines and reload it through a worker, checking the saved greedy tokens.

llama_cpp is never imported in this process: a wheel built for a CPU with more features than this one
crashes on import (illegal instruction), and that too must stay in the worker."""
from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

from ..errors import SlimError
from ..fileio import cache_dir, write_json

ENGINE = "llama.cpp"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp_worker.py")
# llama.h's llama_ftype values (stable across versions; read here without importing llama_cpp)
FTYPES = {"f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
FLOAT_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}  # general.file_type of an unquantized GGUF
FILE_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                   12: "Q3_K_M", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 600.0


class EngineCrashed(RuntimeError):
    """The worker died (a native crash, killed) or stopped answering: the candidate fails with this."""


def missing() -> str | None:
    """None when llama_cpp is installed here (found, not imported), else the install line."""
    from .base import missing as missing_modules

    return missing_modules("llama_cpp")


def file_type(gguf: str) -> str:
    """The GGUF's precision from its header ('Q4_1', 'F32', ...; 'unknown' when it does not say)."""
    from ..generation.gguf_header import read_header

    ft = read_header(gguf).metadata.get("general.file_type")
    return FILE_TYPE_NAMES.get(ft, f"type {ft}") if ft is not None else "unknown"


def is_float(type_name: str) -> bool:
    return type_name in FLOAT_FILE_TYPES.values()


class Worker:
    """One worker process serving one GGUF; `request` sends a JSON object and returns the reply,
    raising EngineCrashed when the process died or timed out (with the tail of its stderr)."""

    def __init__(self, gguf: str, threads: int, n_ctx: int = 512, env: dict | None = None):
        self.gguf = gguf
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, WORKER, gguf, "--threads", str(threads), "--ctx", str(n_ctx)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     env={**os.environ, **(env or {})})
        self._buf = b""
        self.info = self._read(START_TIMEOUT_S)
        if "error" in self.info:
            self.close()
            raise EngineCrashed(f"llama.cpp cannot load {os.path.basename(gguf)}: {self.info['error']}")

    def request(self, obj: dict, timeout: float = REQUEST_TIMEOUT_S) -> dict:
        if self.proc.poll() is not None:
            raise EngineCrashed(self._died())
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise EngineCrashed(self._died()) from None
        reply = self._read(timeout)
        if "error" in reply:
            raise RuntimeError(f"llama.cpp: {reply['error']}")
        return reply

    def _read(self, timeout: float) -> dict:
        fd, end = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise EngineCrashed(f"the llama.cpp worker did not answer in {timeout:.0f} s (killed)")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait(timeout=10)
                raise EngineCrashed(self._died())
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _died(self) -> str:
        rc = self.proc.wait(timeout=10)
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        self._err.seek(0)
        tail = [ln for ln in self._err.read().decode(errors="replace").splitlines() if ln.strip()][-1:]
        return f"the llama.cpp worker died ({how})" + (f": {tail[0][:300]}" if tail else "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._err.close()

    def __del__(self):
        try:
            self.kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class LlamaCppLM:
    """A GGUF in a llama.cpp worker, asked as a generation search asks a torch model: greedy
    generation at batch 1 on given token ids (`generate_timed`, timed in the worker), perplexity on
    given ids. `eos`: the ids masked for the first `new_tokens` (as the baseline's min_new_tokens)."""

    engine = ENGINE

    def __init__(self, gguf: str, threads: int, eos: list[int], n_ctx: int = 512, env: dict | None = None):
        self.gguf, self.eos, self.threads = os.path.abspath(gguf), list(eos), threads
        self.worker = Worker(self.gguf, threads, n_ctx, env)

    def generate_timed(self, input_ids: torch.Tensor, new_tokens: int):
        from ..generation.runner import GenTrace

        if input_ids.shape[0] != 1:
            raise ValueError(f"the llama.cpp worker generates at batch 1 (got batch {input_ids.shape[0]})")
        r = self.worker.request({"op": "generate", "ids": input_ids[0].tolist(), "new_tokens": int(new_tokens),
                                 "eos": self.eos})
        # the first logits' finiteness, as the garbage check reads it (the logits stay in the worker)
        first = torch.zeros(1, 1) if r["finite"] else torch.full((1, 1), float("nan"))
        return GenTrace(tokens=torch.tensor([r["tokens"]], dtype=torch.long), ttft_ms=r["ttft_ms"],
                        step_ms=list(r["step_ms"]), first_logits=first)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, **_ignored) -> torch.Tensor:
        """Greedy, as transformers' generate() returns it: the prompt followed by the new tokens."""
        return torch.cat([input_ids, self.generate_timed(input_ids, max_new_tokens).tokens], dim=1)

    def perplexity(self, ids: torch.Tensor, window: int = 256) -> float:
        r = self.worker.request({"op": "nll", "ids": ids[0].tolist(), "window": window})
        if r["nll"] is None or not r["count"]:
            return float("inf")
        import math

        return math.exp(r["nll"] / r["count"])

    def peak_bytes(self, input_ids: torch.Tensor, new_tokens: int) -> int:
        """What one generation adds to the worker's resident memory (its high-water mark's rise)."""
        r = self.worker.request({"op": "peak", "ids": input_ids[0].tolist(), "new_tokens": int(new_tokens), "eos": self.eos})
        self.rss_bytes = int(r["rss_bytes"])
        return int(r["peak_bytes"])

    def save(self, folder: str, manifest: dict, prompts: list[torch.Tensor], new_tokens: int) -> str:
        return save_folder(folder, self, manifest, prompts, new_tokens)

    def close(self) -> None:
        self.worker.close()


def quantized_path(src: str, quant: str) -> str:
    """Where the requantized copy of `src` is cached: keyed by its path, size and mtime and the type."""
    st = os.stat(src)
    key = hashlib.sha256(f"{os.path.abspath(src)}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(src))[0]
    return os.path.join(cache_dir(), "llamacpp", f"{stem}-{key}-{quant.upper()}.gguf")


def quantize(src: str, quant: str, threads: int = 0, timeout: float = 600.0) -> tuple[str, bool]:
    """(the path of `src` requantized to `quant` (FTYPES) by llama_model_quantize in a worker
    process, whether it came from the cache)."""
    dst = quantized_path(src, quant)
    if os.path.isfile(dst):
        return dst, True
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    p = subprocess.run([sys.executable, WORKER, src, "--quantize", dst, str(FTYPES[quant])], capture_output=True,
                       timeout=timeout, env={**os.environ, "TORCHSLIM_LLAMACPP_THREADS": str(threads)})
    if p.returncode != 0 or not os.path.isfile(dst):
        tail = [ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.strip()][-1:]
        how = f"signal {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"exit code {p.returncode}"
        raise EngineCrashed(f"llama_model_quantize to {quant.upper()} failed ({how})" + (f": {tail[0][:300]}" if tail else ""))
    return dst, False


# -- the saved folder -----------------------------------------------------------------------------

GGUF_NAME = "model.gguf"


def serving_lines(gguf_name: str = GGUF_NAME) -> list[str]:
    return [f"llama-server -m {gguf_name}",
            f"python -c \"import llama_cpp; llm = llama_cpp.Llama(model_path='{gguf_name}'); "
            f"print(llm('The history of the printing press', max_tokens=32)['choices'][0]['text'])\""]


def save_folder(folder: str, model: LlamaCppLM, manifest: dict, prompts: list[torch.Tensor], new_tokens: int) -> str:
    """The chosen GGUF as `folder`/model.gguf, its greedy tokens on `prompts` (reference.json) and the
    manifest (torchslim.json, with the engine and its serving lines)."""
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, GGUF_NAME)
    tmp = dst + f".tmp{os.getpid()}"
    shutil.copyfile(model.gguf, tmp)
    os.replace(tmp, dst)
    ref = {"prompts": [p[0].tolist() for p in prompts], "new_tokens": new_tokens, "eos": model.eos,
           "tokens": [model.generate_timed(p, new_tokens).tokens[0].tolist() for p in prompts]}
    write_json(os.path.join(folder, "reference.json"), ref)
    write_json(os.path.join(folder, "torchslim.json"), {**manifest, "engine": ENGINE, "gguf": GGUF_NAME,
                                                        "serve": serving_lines()})
    return folder


def load_folder(folder: str, manifest: dict, threads: int | None = None, verify: bool = True) -> LlamaCppLM:
    """The saved GGUF in a worker; with `verify`, its greedy tokens checked against reference.json."""
    if missing():
        raise SlimError(f"'{folder}' is a llama.cpp model and llama_cpp is not installed here", "pip install 'torchslim[llamacpp]'")
    with open(os.path.join(folder, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    try:
        model = LlamaCppLM(os.path.join(folder, manifest.get("gguf", GGUF_NAME)), threads or torch.get_num_threads(),
                           ref.get("eos", []))
    except EngineCrashed as e:
        raise SlimError(f"the saved GGUF in '{folder}' does not load: {e}", "re-run torchslim optimize here") from e
    if verify:
        for p, t in zip(ref["prompts"], ref["tokens"]):
            got = model.generate_timed(torch.tensor([p]), ref["new_tokens"]).tokens[0].tolist()
            if got != t:
                same = sum(a == b for a, b in zip(got, t)) / max(1, len(t))
                model.close()
                raise SlimError(f"the reloaded llama.cpp model does not reproduce its saved greedy tokens ({same:.0%} identical)",
                                "the llama.cpp build differs from where it was saved; re-run torchslim optimize here")
    return model
