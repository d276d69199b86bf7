"""Feature detection: what this machine can run fast. Nothing here initialises CUDA on import."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

import torch


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    """An x86 CPU: where the fbgemm/oneDNN INT8 kernels (VNNI/AMX) the static INT8 paths use exist."""
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    from .errors import SlimError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SlimError(f"unknown device '{device}'", "use --device cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise SlimError(f"--device {device} is not supported: torchslim runs on CPUs and NVIDIA GPUs", "use --device cpu, cuda or auto")
    if dev.type == "cuda" and not cuda_available():
        raise SlimError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu")
    return dev


def supports_bf16(device: torch.device) -> bool:
    """True where BF16 matmuls are fast (AVX-512 BF16/AMX on CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags()


def supports_fp16(device: torch.device) -> bool:
    """True where FP16 matmuls are fast (every CUDA GPU; CPUs with AMX-FP16 or AVX512-FP16)."""
    if device.type == "cuda":
        return True
    flags = cpu_flags()
    return "amx_fp16" in flags or "avx512_fp16" in flags


def int8_engine() -> str | None:
    """The quantized engine PyTorch's eager INT8 kernels use here, or None."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    return None


def describe(device: torch.device) -> dict:
    """A short description of the machine, for results.json and BENCHMARKS.md."""
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "bf16": supports_bf16(device),
        "fp16": supports_fp16(device),
        "amx": sorted(f for f in cpu_flags() if f.startswith("amx")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:  # the version without importing torchao (slow, noisy)
        info["torchao"] = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        info["torchao"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
