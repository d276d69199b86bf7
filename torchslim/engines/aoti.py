"""AOTInductor: torch.export + aoti_compile_and_package -> a .pt2 package (a shared library and the
weights), served by torch._inductor.aoti_load_package, or torch::inductor::AOTIModelPackageLoader in C++."""
from __future__ import annotations

import os
import tempfile

import torch
import torch.utils._pytree as pytree

from ..progress import quiet
from .base import EngineModule
from .export import shape_mismatch


def compile_package(ep: torch.export.ExportedProgram, freezing: bool, check: tuple | None = None) -> tuple[bytes, float]:
    """The .pt2 package's bytes, and where `check` = (inputs, expected outputs) the smallest cosine
    of the package's outputs to the expected ones (1.0 unchecked)."""
    from ..fidelity import compare

    with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp, quiet(output=True):
        path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(tmp, "model.pt2"),
                                                        inductor_configs={"freezing": freezing})
        cos = 1.0 if check is None else compare(check[1], check[0](torch._inductor.aoti_load_package(path))).min_cosine
        with open(path, "rb") as f:
            return f.read(), cos


class AotiModule(EngineModule):
    """An AOTInductor package (model.pt2), loaded with torch._inductor.aoti_load_package."""

    engine = "aoti"

    def build(self):
        # a package compiled for static shapes does not check them (it computes garbage): check here
        static = self.meta.get("serves", "").startswith("serves") and "input_shapes" in self.meta
        self.fixed = self.meta["input_shapes"] if static else None
        with tempfile.TemporaryDirectory(prefix="torchslim-aoti-") as tmp:
            path = os.path.join(tmp, "model.pt2")
            with open(path, "wb") as f:
                f.write(self.file("model.pt2"))
            return torch._inductor.aoti_load_package(path)  # extracts what it needs; the file can go

    def forward(self, *args, **kwargs):
        if self.fixed is not None:
            flat = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            wrong = shape_mismatch(self.fixed, flat)
            if wrong:
                raise RuntimeError(f"this AOTInductor package {self.meta['serves']}: {wrong}")
        try:
            out = self.runner(*args, **kwargs)
        except Exception as e:
            raise self.explain(e, [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]) from e
        # a package exported over FlatOutputs returns a tuple of tensors: the model's structure rebuilt here
        return self.rebuild(list(out)) if self.meta.get("flat_outputs") else out

    @classmethod
    def serving_lines(cls, meta: dict, path: str) -> str:
        outputs = ("outputs: the tuple of the model's output tensors, in pytree order" if meta.get("flat_outputs")
                   else "same inputs and outputs as the original model")
        return (f"model = torch._inductor.aoti_load_package({path!r})\n"
                f"with torch.no_grad():\n    out = model(*example_args)  # {outputs}\n")

    @classmethod
    def deploy_how(cls, path: str, meta_path: str) -> str:
        return f"torch._inductor.aoti_load_package('{path}') (C++: torch::inductor::AOTIModelPackageLoader)"
