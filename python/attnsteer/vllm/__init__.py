"""attnsteer for vLLM: the per-request steering format (`.request`), a paged step's
per-request plan (`.plan`, the same plan the Hugging Face adapter makes) and the plugin that
overrides vLLM's ``CPU_ATTN`` backend (`.plugin`, `.backend`; loaded by vLLM from the
``vllm.general_plugins`` entry point). The model to serve is written by ``attnsteer export DIR``.
Guide: ``docs/guides/vllm.md``."""

from .plan import plan_request, request_context
from .request import RequestSteering, SteeredPrompt, parse_request, spans_from_mask, steered_prompt

__all__ = [
    "SteeredPrompt",
    "RequestSteering",
    "steered_prompt",
    "parse_request",
    "spans_from_mask",
    "plan_request",
    "request_context",
]
