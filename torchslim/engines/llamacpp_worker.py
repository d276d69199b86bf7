"""The llama.cpp worker: a process that loads one GGUF with llama-cpp-python and answers JSON-line
requests on stdin (`generate`, `nll`, `peak`: one generation's memory, `quit`), or requantizes a GGUF (`--quantize`). Run by
path (`python llamacpp_worker.py GGUF --threads N --ctx N`), never imported by torchslim's code: it
needs only the standard library, numpy and llama_cpp, and a native crash in llama.cpp kills this
process, not the search (engines/llamacpp.py is its client).

Replies go to the original stdout; fd 1 is pointed at stderr first, so llama.cpp's own prints cannot
corrupt the protocol. Times are measured here, beside llama.cpp, as the torch recipes' are in theirs.

Test hook: TORCHSLIM_LLAMACPP_ABORT=<op> makes the worker os.abort() on that request (a native crash)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _reply(out, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rise(fn) -> dict:
    """The rise of the RSS high-water mark while `fn()` runs (Linux: the mark reset first, as
    torchslim.measure.peak_memory does), and the RSS before it (the model's mapped weights included)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        exact = True
    except OSError:
        exact = False
    before = _status_kb("VmRSS") or 0
    fn()
    after = (_status_kb("VmHWM") if exact else None) or before
    return {"peak_bytes": max(0, after - before) * 1024, "rss_bytes": before * 1024,
            "method": "RSS high-water rise" if exact else "unknown"}


class Engine:
    """One GGUF: a generation context (logits of the last position only) and, made on the first
    perplexity request, a second one that keeps every position's logits (as benchmarks/peers/gen_llama.py)."""

    def __init__(self, gguf: str, threads: int, n_ctx: int):
        import numpy as np
        from llama_cpp import Llama

        self.np, self.gguf, self.threads, self.n_ctx = np, gguf, threads, n_ctx
        self.llm = Llama(model_path=gguf, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), n_threads=threads,
                         n_threads_batch=threads, logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self._ppl = None

    def _last_logits(self):
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def generate(self, ids: list[int], new_tokens: int, eos: list[int]) -> dict:
        """Greedy, exactly `new_tokens` tokens with the EOS ids masked (generate(min_new_tokens=new_tokens))."""
        np = self.np
        mask = np.zeros(self.n_vocab, dtype=np.float32)
        mask[[e for e in eos if 0 <= e < self.n_vocab]] = -np.inf
        self.llm.reset()  # n_past = 0: eval() drops the KV cache beyond it
        t0 = time.perf_counter()
        self.llm.eval(ids)
        logits = self._last_logits()
        tok = int(np.argmax(logits + mask))
        t_prev = time.perf_counter()
        ttft = (t_prev - t0) * 1000.0
        finite = bool(np.isfinite(logits).all())
        out, steps = [tok], []
        for _ in range(1, new_tokens):
            self.llm.eval([tok])
            tok = int(np.argmax(self._last_logits() + mask))
            now = time.perf_counter()
            steps.append((now - t_prev) * 1000.0)
            t_prev = now
            out.append(tok)
        return {"tokens": out, "ttft_ms": ttft, "step_ms": steps, "finite": finite}

    def nll(self, ids: list[int], window: int) -> dict:
        """Summed next-token negative log-likelihood over `ids` in independent windows, and the count
        (quality.perplexity's windows: exp(nll / count) is the same perplexity)."""
        from llama_cpp import Llama

        np = self.np
        if self._ppl is None:
            self._ppl = Llama(model_path=self.gguf, n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=min(self.n_ctx, 512),
                              n_threads=self.threads, n_threads_batch=self.threads, logits_all=True, verbose=False)
        total, count = 0.0, 0
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s:s + window]
            if len(chunk) < 2:
                break
            self._ppl.reset()
            self._ppl.eval(chunk)
            logits = np.array(self._ppl.scores[:len(chunk) - 1], dtype=np.float64)
            m = logits.max(axis=-1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
            total += float((logz - logits[np.arange(len(chunk) - 1), np.asarray(chunk[1:])]).sum())
            count += len(chunk) - 1
        self._ppl.close()  # its logits of every position (n_ctx x vocab floats) are not kept while timing
        self._ppl = None
        return {"nll": total if math.isfinite(total) else None, "count": count}


def serve(args) -> int:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # llama.cpp's prints go to stderr
    sys.stdout = sys.stderr
    abort_at = os.environ.get("TORCHSLIM_LLAMACPP_ABORT")
    t0 = time.perf_counter()
    try:
        eng = Engine(args.gguf, args.threads, args.ctx)
    except Exception as e:  # noqa: BLE001 - reported to the client as the row's reason
        _reply(out, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        return 1
    import llama_cpp

    _reply(out, {"ready": True, "load_ms": (time.perf_counter() - t0) * 1000.0, "n_vocab": eng.n_vocab,
                 "version": llama_cpp.__version__,
                 "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()})
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op == abort_at:
            os.abort()
        try:
            if op == "generate":
                _reply(out, eng.generate(req["ids"], int(req["new_tokens"]), req.get("eos") or []))
            elif op == "nll":
                _reply(out, eng.nll(req["ids"], int(req.get("window", 256))))
            elif op == "peak":
                _reply(out, _peak_rise(lambda: eng.generate(req["ids"], int(req["new_tokens"]), req.get("eos") or [])))
            elif op == "quit":
                _reply(out, {"bye": True})
                return 0
            else:
                _reply(out, {"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - one failed request, the worker goes on
            _reply(out, {"error": f"{type(e).__name__}: {e}"})
    return 0


def quantize(src: str, dst: str, ftype: int) -> int:
    """llama_model_quantize(src -> dst, ftype), requantizing a quantized source; written to dst.tmp
    and renamed, so a stopped run leaves no half file."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.allow_requantize = True
    p.nthread = int(os.environ.get("TORCHSLIM_LLAMACPP_THREADS", "0"))
    tmp = dst + f".tmp{os.getpid()}"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), p)
    if rc == 0:
        os.replace(tmp, dst)
    elif os.path.exists(tmp):
        os.remove(tmp)
    return int(rc != 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--quantize", nargs=2, metavar=("DST", "FTYPE"), default=None)
    args = ap.parse_args(argv)
    if args.quantize:
        return quantize(args.gguf, args.quantize[0], int(args.quantize[1]))
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
