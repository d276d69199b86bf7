"""Feature detection: what this machine can run fast. Nothing here initialises CUDA on import."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from dataclasses import asdict, dataclass

import torch

# Tests and "what would a host without AMX do" runs set this to a flag list ("avx2 avx512f ...") or
# to a file holding one (a saved /proc/cpuinfo works): detection then reads it instead of this CPU.
FLAGS_ENV = "TORCHSLIM_CPU_FLAGS"


def parse_flags(text: str) -> frozenset[str]:
    """The CPU flags in `text`: a /proc/cpuinfo ("flags : ..." or ARM "Features : ..." line) or a
    plain whitespace/comma separated list."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset(text.replace(",", " ").split())


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        if os.path.isfile(override):
            with open(override, encoding="utf-8") as f:
                return parse_flags(f.read())
        return parse_flags(override)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class Capabilities:
    """What the CPU (and GPU) can run natively; every field is read from the hardware, none assumed.

    bf16/fp16 mean native units (AVX512-BF16/AMX-BF16, AVX512-FP16/AMX-FP16 on CPU): oneDNN runs
    BF16 on any AVX-512 CPU by emulation, and torch.ops.mkldnn._is_mkldnn_bf16_supported() says
    True there, but the emulated recipes ran at 0.14-0.87x of FP32 (issue 13)."""

    avx2: bool = False
    avx512: bool = False
    vnni: bool = False  # AVX512-VNNI or AVX-VNNI: INT8 dot products
    avx512_bf16: bool = False
    avx512_fp16: bool = False
    amx_bf16: bool = False
    amx_int8: bool = False
    amx_fp16: bool = False
    cores: int = 1
    cuda_capability: str | None = None  # "9.0" on an H100; None without CUDA

    @classmethod
    def from_flags(cls, flags, cores: int | None = None, cuda_capability: str | None = None) -> "Capabilities":
        f = frozenset(flags)
        return cls(avx2="avx2" in f, avx512="avx512f" in f, vnni=bool({"avx512_vnni", "avx_vnni"} & f),
                   avx512_bf16="avx512_bf16" in f, avx512_fp16="avx512_fp16" in f, amx_bf16="amx_bf16" in f,
                   amx_int8="amx_int8" in f, amx_fp16="amx_fp16" in f, cores=cores or os.cpu_count() or 1,
                   cuda_capability=cuda_capability)

    @property
    def bf16(self) -> bool:
        return self.avx512_bf16 or self.amx_bf16

    @property
    def fp16(self) -> bool:
        return self.amx_fp16 or self.avx512_fp16

    @property
    def amx(self) -> bool:
        return self.amx_bf16 or self.amx_int8

    def tier(self) -> str:
        """The hardware key of priors.json: 'amx', 'avx512_bf16' (VNNI and native BF16 without AMX,
        e.g. AMD Zen 4/5 EPYC), 'vnni', 'avx512', 'avx2' or 'other'."""
        if self.amx:
            return "amx"
        if self.vnni and self.avx512_bf16:
            return "avx512_bf16"
        for name in ("vnni", "avx512", "avx2"):
            if getattr(self, name):
                return name
        return "other"

    def to_dict(self) -> dict:
        return {**asdict(self), "bf16": self.bf16, "fp16": self.fp16, "tier": self.tier()}


def capabilities(device: torch.device | None = None) -> Capabilities:
    cc = None
    if device is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        cc = f"{major}.{minor}"
    return Capabilities.from_flags(cpu_flags(), cuda_capability=cc)


def onednn_bf16() -> bool:
    """Whether oneDNN runs BF16 at all here (natively or emulated with AVX-512); False on AVX2 CPUs
    (a BF16 LSTM under autocast fails there with 'could not create a primitive descriptor')."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def seven_bit_int8(asked: bool | None = None) -> bool:
    """7-bit INT8 (`asked`, else on x86 CPUs without VNNI/AMX-INT8, whose u8*s8 multiply-add pair
    sums saturate int16): torch's reduce_range, ORT's advice for its U8S8 kernels, NNCF's OverflowFix
    on every layer. On a 2-core AVX2-only EPYC, 8 -> 7 bits raised the min cosine of ORT static QDQ on
    the Fashion CNN 0.754 -> 0.9996, ORT dynamic on a small Transformer encoder 0.974 -> 0.9997, NNCF
    INT8 on it 0.970 -> 0.984. VNNI CPUs accumulate in int32 and keep all 8 bits."""
    if asked is not None:
        return asked
    flags = cpu_flags()
    return bool(flags) and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def da8w4_fast_path() -> str | None:
    """None where torchao's DA8W4 CPU kernel (torchao::da8w4_linear_cpu: INT8 dynamic activations x
    INT4 weights) has a fast path, else why not. Its AVX512-VNNI micro-kernel for M <= 4 (decode) and
    its brgemm path are both taken only where ATen's cpublas can pack u8 weights (cpublas::could_pack,
    which needs AMX-INT8); with AVX512-VNNI but no AMX it runs a scalar dequantize-and-multiply loop
    (torchao/csrc/cpu/aten_kernels/da8w4_linear.cpp, pytorch/ao)."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return None
    has = "AVX512-VNNI but no AMX-INT8" if "avx512_vnni" in flags else "no AMX-INT8"
    return (f"DA8W4's fast paths need AMX-INT8 (this CPU: {has}; torchao takes its VNNI decode kernel and its "
            "brgemm only where cpublas can pack u8 weights, i.e. with AMX, else it runs scalar loops)")


# What a technique config may declare in `requires` (see techniques/base.py), and the reason a recipe
# is skipped where it is missing. Checked by `missing_hardware`.
REQUIREMENTS = {
    "native_bf16": "no native BF16 on this CPU (needs AVX512-BF16 or AMX-BF16): emulated, measured 0.1-0.9x of FP32",
    "native_fp16": "no native FP16 on this CPU (needs AVX512-FP16 or AMX-FP16): emulated, slower than FP32",
}


def missing_hardware(requirement: str, device: torch.device, caps: Capabilities | None = None) -> str | None:
    """None where `device` has `requirement`, else the reason it is missing."""
    if requirement not in REQUIREMENTS:
        raise ValueError(f"unknown hardware requirement {requirement!r}: known {sorted(REQUIREMENTS)}")
    if device.type == "cuda":
        if requirement == "native_bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no native BF16 (needs sm80+)"
        return None
    caps = caps or capabilities(device)
    ok = {"native_bf16": caps.bf16, "native_fp16": caps.fp16}[requirement]
    return None if ok else REQUIREMENTS[requirement]


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
    """True where BF16 matmuls are fast: native units (AVX512-BF16/AMX-BF16) on CPU, Ampere+ on
    CUDA. Not torch.ops.mkldnn._is_mkldnn_bf16_supported(), which is True on AVX-512 CPUs that
    only emulate BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return Capabilities.from_flags(cpu_flags()).bf16


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
        "capabilities": capabilities(device).to_dict(),
        "cpu_flags_source": os.environ.get(FLAGS_ENV) and f"${FLAGS_ENV}" or "/proc/cpuinfo",
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


# The CPU features that decided which recipe won (BENCHMARKS.md: BF16 runs 0.14-0.9x of FP32 without
# native BF16, INT8 saturates without VNNI, AMX changes the winners): a saved choice is only as true
# as these are on the host that serves it.
DECISIVE = ("amx", "avx512_vnni", "avx512_bf16", "avx512f")


def decisive_flags() -> dict[str, bool]:
    """{feature: present} for the DECISIVE features of this host (TORCHSLIM_CPU_FLAGS fakes another's)."""
    f = cpu_flags()
    return {"amx": bool({"amx_bf16", "amx_int8"} & f), "avx512_vnni": "avx512_vnni" in f,
            "avx512_bf16": "avx512_bf16" in f, "avx512f": "avx512f" in f}


# The instruction sets a native build (-march=native, llama.cpp's GGML_NATIVE) may use: a binary built
# where one is present dies (illegal instruction) where it is absent, so cached native builds are keyed by them.
NATIVE_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
              "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
              "amx_int8", "amx_bf16")


def native_build_key() -> str:
    """'<tier>-<hash of the NATIVE_ISA flags present>': the folder a native wheel built here is cached
    under (Makefile `llamacpp`), the same on every host with the same instruction sets."""
    import hashlib
    import platform

    present = ",".join(f for f in NATIVE_ISA if f in cpu_flags())
    return f"{platform.machine()}-{capabilities().tier()}-{hashlib.sha256(present.encode()).hexdigest()[:10]}"


def host_record() -> dict:
    """What a saved model records of the host that chose it: CPU, cores, decisive features, versions."""
    d = describe(torch.device("cpu"))
    return {"cpu": d.get("cpu"), "cores": os.cpu_count(), "machine": d["machine"], "decisive_flags": decisive_flags(),
            "tier": capabilities().tier(), "cpu_flags_source": d["cpu_flags_source"], "torch": d["torch"],
            "torchao": d["torchao"], "python": d["python"]}


def host_mismatch(saved: dict | None) -> str | None:
    """One line on how this host's decisive CPU features differ from the `saved` host_record(), or None."""
    was = (saved or {}).get("decisive_flags")
    if not isinstance(was, dict):
        return None
    now = decisive_flags()
    gone = [k for k in DECISIVE if was.get(k) and not now.get(k)]
    new = [k for k in DECISIVE if now.get(k) and not was.get(k)]
    if not gone and not new:
        return None
    parts = ([f"lacks {', '.join(gone)}"] if gone else []) + ([f"adds {', '.join(new)}"] if new else [])
    return f"this CPU {' and '.join(parts)} compared with the host that chose the recipe ({saved.get('cpu') or 'unknown CPU'})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
