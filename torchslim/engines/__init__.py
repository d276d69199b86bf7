"""Deployment engines: the model as an engine's file, run from torch tensors to torch tensors, saved
and reloaded without model code. `base.py` holds what every engine shares (`EngineModule` and its
registry, save/load, the extra check), `export.py` the export-shape helpers; each engine is one file
(its export, its runner, the extra it needs, its serving lines): `aoti.py`, `ort.py`, `openvino.py`,
imported here so each registers its `EngineModule` (a new engine file needs no edit here). A caller
looks an engine up by name in `EngineModule.registry`, never branches on it. Importing this package
imports no engine's own library (each is imported when a model is built)."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
del _mod
from . import aoti, openvino, ort
from .aoti import AotiModule
from .base import (EXTRAS, META, EngineModule, PerConfig, build_and_call, deploy_line, find, from_numpy, load, missing,
                   out_spec, save, serving_lines, to_numpy)
from .export import (dynamic_dims, dynamic_shapes, export_program, export_with_shapes, quantizable_layers, resolve_skip,
                     served_shapes, shape_mismatch, shapes_meta, static_meta, torch_export)
from .openvino import OpenVinoModule
from .ort import SPIN, OrtModule

__all__ = ["aoti", "openvino", "ort", "AotiModule", "OpenVinoModule", "OrtModule", "SPIN", "EXTRAS", "META",
           "EngineModule", "PerConfig", "build_and_call", "deploy_line", "find", "from_numpy", "load", "missing",
           "out_spec", "save", "serving_lines", "to_numpy", "dynamic_dims", "dynamic_shapes", "export_program",
           "export_with_shapes", "quantizable_layers", "resolve_skip", "served_shapes", "shape_mismatch",
           "shapes_meta", "static_meta", "torch_export"]
