"""Techniques: import each module so it registers its config and handler."""
from . import (  # noqa: F401
    ao_dynamic, ao_float8, aoti, channels_last, compile, dynamic_int8, fast_transformer, inference_mode, lm_decode, lm_weights, low_precision, openvino, ort, static_int8, static_int8_fx, static_linear_int8, torchscript, weight_only,
)
from .ao_dynamic import AoInt8DynamicConfig
from .ao_float8 import AoFloat8Config
from .aoti import AotiConfig
from .base import CONFIGS, Context, TechniqueConfig, config_from_dict, handler
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
    "CONFIGS", "Context", "TechniqueConfig", "config_from_dict", "handler",
    "ChannelsLastConfig", "CompileConfig", "DynamicInt8Config", "InferenceModeConfig",
    "LowPrecisionConfig", "TorchScriptConfig", "StaticInt8Config", "StaticInt8FxConfig", "StaticLinearInt8Config", "Pt2eDynamicInt8Config",
    "AoInt8DynamicConfig", "AoFloat8Config", "WeightOnlyConfig", "FastTransformerConfig", "LMDecodeConfig", "LMWeightsConfig",
    "AotiConfig", "OrtConfig", "OrtStaticInt8Config", "OpenVinoConfig", "OpenVinoInt8Config",
]
