"""A GGUF file's header read without its tensor data: metadata, tensor shapes and types, and the file
size the header implies (so a truncated file or a missing part of a split model is caught before
anything is loaded)."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from ..errors import SlimError

MAGIC = b"GGUF"
# value types of the GGUF spec: struct format and size of the scalars
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
KEEP_ARRAY = 64  # arrays longer than this (the vocabulary) keep only their length


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (innermost first)
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: str
    version: int
    metadata: dict  # key -> value (long arrays: their length, under key + ".length" too)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0

    @property
    def expected_size(self) -> int:
        """The byte the last tensor's data ends at."""
        return self.data_start + max((t.offset + t.nbytes for t in self.tensors), default=0)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default=None):
        """An architecture key without its prefix: get('context_length') reads '<arch>.context_length'."""
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)


class _Reader:
    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise SlimError(f"'{self.path}' ends at byte {self.size} inside its GGUF header (truncated or not a GGUF file)",
                            "download the file again, or join all the parts of a split model (cat part* > model.gguf)")
        return b

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.scalar("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        if self.f.tell() + n > self.size:
            self.read(n)  # raises: the file ends inside the string
        self.f.seek(n, os.SEEK_CUR)

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if count <= KEEP_ARRAY:
                return [self.value(etype) for _ in range(count)]
            if etype in _SCALARS:
                self.f.seek(count * struct.calcsize(_SCALARS[etype]), os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.skip(etype)
            return _Length(count)
        raise SlimError(f"'{self.path}' has an unknown GGUF value type {vtype}", "check the file is a GGUF model")

    def skip(self, vtype: int) -> None:
        if vtype == _STRING:
            self.skip_string()
        else:
            self.value(vtype)


class _Length(int):
    """A long array's length (its items are not kept)."""


def _tensor_bytes(shape: tuple[int, ...], ggml_type: int, path: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as e:
        raise SlimError(f"'{path}' has a tensor of GGML type {ggml_type}, unknown to this gguf package",
                        "pip install -U gguf") from e
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def read_header(path: str) -> GGUFHeader:
    """The header of the GGUF file at `path` (SlimError if it is not one, is truncated, or its header
    says its data goes past the end of the file). Reads the header only, not the tensor data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        if f.read(4) != MAGIC:
            raise SlimError(f"'{path}' is not a GGUF file (no GGUF magic)", "give a .gguf model file")
        version = r.scalar("<I")
        if version < 2:
            raise SlimError(f"'{path}' is GGUF version {version}, older than any reader supports", "convert it again with llama.cpp")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.scalar("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            shape = tuple(r.scalar("<Q") for _ in range(r.scalar("<I")))
            gtype, offset = r.scalar("<I"), r.scalar("<Q")
            tensors.append(GGUFTensor(name, shape, gtype, offset, _tensor_bytes(shape, gtype, path)))
        align = int(meta.get("general.alignment", 32) or 32)
        start = -(-f.tell() // align) * align
    head = GGUFHeader(path=path, version=version, metadata=meta, tensors=tensors, data_start=start, file_size=size)
    if head.expected_size > size:
        split = meta.get("split.count")
        raise SlimError(f"'{os.path.basename(path)}' is incomplete: the file ends at byte {size}, its header says "
                        f"{head.expected_size}" + (f" (part of a model split in {split})" if split else ""),
                        "download it again, or join all the parts of a split model in order (cat part1 part2 ... > model.gguf)")
    if int(meta.get("split.count", 1) or 1) > 1:
        raise SlimError(f"'{os.path.basename(path)}' is part {int(meta.get('split.no', 0)) + 1} of a GGUF split in "
                        f"{meta['split.count']} files", "merge them first: llama-gguf-split --merge first-part.gguf model.gguf")
    return head
