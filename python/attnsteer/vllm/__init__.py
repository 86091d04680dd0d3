"""attnsteer for vLLM (issue 12, in progress): the per-request steering format
(:mod:`.request`) and a paged step's per-request plan (:mod:`.plan`, the same plan the Hugging
Face adapter makes). The model to serve is written by ``attnsteer export DIR``. The attention
backend that uses them is not built yet."""

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
