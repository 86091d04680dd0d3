"""attnsteer: steer the attention of Hugging Face language models toward marked spans."""
from __future__ import annotations

from . import ops, reference
from .ops import backend, scale_keys_, span_bias, steered_attention, steered_softmax

__version__ = "0.1.0"

__all__ = [
    "backend",
    "ops",
    "reference",
    "scale_keys_",
    "span_bias",
    "steered_attention",
    "steered_softmax",
    "__version__",
]
