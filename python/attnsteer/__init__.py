"""attnsteer: steer the attention of Hugging Face language models toward marked spans."""
from __future__ import annotations

from . import models, ops, reference
from .directer import Directer, DirecterStats, LayerRanking, rank_layers
from .generate import generate
from .hf import steer, steer_pipeline
from .methods import GUIDE, PASTA, InstABoost, KeyScale, Method, SpotLight
from .ops import backend, scale_keys_, span_bias, steered_attention, steered_softmax
from .spans import MarkupError, format_spans, highlight, show_spans

__version__ = "0.1.0"

__all__ = [
    "Directer",
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
    "generate",
    "highlight",
    "show_spans",
    "format_spans",
    "steer",
    "steer_pipeline",
    "backend",
    "ops",
    "reference",
    "scale_keys_",
    "span_bias",
    "steered_attention",
    "steered_softmax",
    "__version__",
]
