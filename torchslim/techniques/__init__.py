"""Techniques: every module of this package is imported so it registers its config and handler."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):  # a new technique file needs no edit here
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
del _mod
from .ao_dynamic import AoInt8DynamicConfig
from .ao_float8 import AoFloat8Config
from .aoti import AotiConfig
from .base import CONFIGS, Context, TaskMetric, TechniqueConfig, config_from_dict, handler, register, registered, with_per_layer_skip
from .channels_last import ChannelsLastConfig
from .compile import CompileConfig
from .dynamic_int8 import DynamicInt8Config
from .fast_transformer import FastTransformerConfig
from .inference_mode import InferenceModeConfig
from .lm_decode import LMDecodeConfig
from .lm_weights import LMWeightsConfig
from .low_precision import LowPrecisionConfig
from .openvino import OpenVinoConfig, OpenVinoInt8Config
from .ort import OrtConfig, OrtStaticInt8Config
from .static_int8 import Pt2eDynamicInt8Config, StaticInt8Config
from .static_int8_fx import StaticInt8FxConfig
from .static_linear_int8 import StaticLinearInt8Config
from .torchscript import TorchScriptConfig
from .weight_only import WeightOnlyConfig

__all__ = [
    "CONFIGS", "Context", "TaskMetric", "TechniqueConfig", "config_from_dict", "handler", "register", "registered", "with_per_layer_skip",
    "ChannelsLastConfig", "CompileConfig", "DynamicInt8Config", "InferenceModeConfig",
    "LowPrecisionConfig", "TorchScriptConfig", "StaticInt8Config", "StaticInt8FxConfig", "StaticLinearInt8Config", "Pt2eDynamicInt8Config",
    "AoInt8DynamicConfig", "AoFloat8Config", "WeightOnlyConfig", "FastTransformerConfig", "LMDecodeConfig", "LMWeightsConfig",
    "AotiConfig", "OrtConfig", "OrtStaticInt8Config", "OpenVinoConfig", "OpenVinoInt8Config",
]
