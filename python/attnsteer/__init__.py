"""attnsteer: steer the attention of Hugging Face language models toward marked spans."""

import logging as _logging

from . import models, ops
from .config import NoSettingHelps, SteeringConfig, recommended
from .directer import Directer, DirecterStats, LayerRanking, rank_layers
from .generate import generate
from .hf import steer, steer_pipeline
from .influence import Calibration, InfluenceResult, SpanMass, calibrate_delta, influence, span_mass
from .keyedit import PRISM, SEKA, AdaSEKA, KeyProjection, learn_projection
from .methods import GUIDE, PASTA, InstABoost, KeyScale, Method, SpotLight
from .ops import backend, reference, scale_keys_, span_bias, steered_attention, steered_softmax
from .profiling import HeadProfile, profile_heads
from .spa import SPA
from .spans import MarkupError, format_spans, highlight, show_spans

__version__ = "0.1.0"

# The library's logger; silent unless the application configures logging.
logger = _logging.getLogger("attnsteer")
logger.addHandler(_logging.NullHandler())

__all__ = [
    "Directer",
    "SteeringConfig",
    "NoSettingHelps",
    "recommended",
    "DirecterStats",
    "LayerRanking",
    "rank_layers",
    "GUIDE",
    "InstABoost",
    "KeyScale",
    "MarkupError",
    "Method",
    "PASTA",
    "SpotLight",
    "SPA",
    "SEKA",
    "AdaSEKA",
    "PRISM",
    "KeyProjection",
    "learn_projection",
    "generate",
    "influence",
    "calibrate_delta",
    "Calibration",
    "InfluenceResult",
    "span_mass",
    "profile_heads",
    "HeadProfile",
    "SpanMass",
    "highlight",
    "show_spans",
    "format_spans",
    "steer",
    "steer_pipeline",
    "backend",
    "models",
    "ops",
    "reference",
    "scale_keys_",
    "span_bias",
    "steered_attention",
    "steered_softmax",
    "__version__",
    "logger",
]
