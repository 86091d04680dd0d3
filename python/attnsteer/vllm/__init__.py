"""attnsteer for vLLM (issue 12, in progress): the per-request steering format
(:mod:`.request`). The model to serve is written by ``attnsteer export DIR``."""

from .request import RequestSteering, SteeredPrompt, parse_request, spans_from_mask, steered_prompt

__all__ = ["SteeredPrompt", "RequestSteering", "steered_prompt", "parse_request", "spans_from_mask"]
