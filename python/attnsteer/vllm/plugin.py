"""The vLLM plugin (entry point ``vllm.general_plugins``: ``attnsteer = attnsteer.vllm.plugin:register``).

In every vLLM process it (1) overrides the ``CPU_ATTN`` backend with attnsteer's
(`attnsteer.vllm.backend`), (2) checks each request where vLLM admits it
(``InputProcessor.process_inputs``, in the front-end process): a bad steering request is refused
there with a ``VLLMValidationError`` (HTTP 400 from the server) naming the problem, and the engine
keeps serving the others; a steered request without a ``cache_salt`` gets the one its steering
implies (a user's own salt is kept, extended with it), so prefix caching never mixes steered and
unsteered KV; and (3) wraps the model runner's attention-metadata build so each step publishes
which of its requests are steered, at which positions (``extra_args["attnsteer"]`` or the
server's flat ``attnsteer_method`` / ``attnsteer_spans``, read by
`attnsteer.vllm.request.parse_request`; parsed once per request).

Requests are untrusted: their specs are read with the request grammar (values only, bounded by the
served model's layer and head counts; `attnsteer.specs.parse_request_spec`). PASTA head profiles
from files are the operator's: ``ATTNSTEER_HEAD_PROFILES="name=/path/heads.json,…"`` in the server's
environment is read once, when the plugin registers (a bad file stops the start-up, naming it), and
requests refer to those profiles by name.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional

from ..specs import HeadMap, RequestLimits, load_head_profiles
from .backend import Step
from .request import parse_request, request_salt

__all__ = ["register"]

_DONE = False
PARSED = "_attnsteer_parsed"  # runner attribute: request id -> parsed RequestSteering (None: unsteered)
PROFILES_ENV = "ATTNSTEER_HEAD_PROFILES"
_PROFILES: Dict[str, HeadMap] = {}


def register() -> None:
    global _DONE
    if _DONE:
        return
    _PROFILES.update(load_head_profiles(os.environ.get(PROFILES_ENV, "")))  # the operator's files, once
    _DONE = True
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    register_backend(AttentionBackendEnum.CPU_ATTN, "attnsteer.vllm.backend.AttnsteerCPUBackend")
    _check_at_admission()
    original = GPUModelRunner._build_attention_metadata

    @functools.wraps(original)
    def build(self, num_tokens, num_reqs, *args, **kwargs):
        step = _step(self, num_reqs)
        attn_metadata, rest = original(self, num_tokens, num_reqs, *args, **kwargs)
        # The step rides on the metadata objects themselves: with async scheduling the next
        # step's metadata is built while this one runs, so nothing global can carry it.
        for per_layer in attn_metadata if isinstance(attn_metadata, list) else [attn_metadata]:
            for md in per_layer.values():
                md.attnsteer_step = step
        return attn_metadata, rest

    GPUModelRunner._build_attention_metadata = build

    # Per-request state lives exactly as long as vLLM's own: when the runner drops a finished,
    # aborted (a dropped stream) or preempted-and-freed request, its parsed steering goes too.
    original_update = GPUModelRunner._update_states

    @functools.wraps(original_update)
    def update_states(self, scheduler_output):
        out = original_update(self, scheduler_output)
        cache = self.__dict__.get(PARSED)
        if cache:
            for req_id in [k for k in cache if k not in self.requests]:
                del cache[req_id]
        return out

    GPUModelRunner._update_states = update_states
    _add_state_probe()


def _add_state_probe() -> None:
    """``attnsteer_state`` on every worker: what the plugin holds per request, for
    ``LLM.collective_rpc("attnsteer_state")`` or a dev-mode server's ``POST /collective_rpc``."""
    from vllm.v1.worker.worker_base import WorkerBase

    def attnsteer_state(self) -> dict:
        runner = getattr(self, "model_runner", None)
        parsed = getattr(runner, "__dict__", {}).get(PARSED, {})
        return {
            "parsed_requests": len(parsed),
            "steered_requests": sum(v is not None for v in parsed.values()),
            "runner_requests": len(getattr(runner, "requests", {})),
        }

    WorkerBase.attnsteer_state = attnsteer_state


def _check_at_admission() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs

    @functools.wraps(original)
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        admit(request, self.tokenizer, self.model_config)
        return request

    InputProcessor.process_inputs = process_inputs


def unsteerable(model_config) -> Optional[str]:
    """Why the served model's attention cannot be steered by the ``CPU_ATTN`` override (its layers
    use another backend or none), or None."""
    if model_config is None:
        return None
    checks = (
        ("use_mla", "multi-head latent attention (MLA) runs vLLM's MLA backend"),
        ("is_encoder_decoder", "encoder-decoder models are not supported (decoder self-attention only)"),
        ("is_attention_free", "the model has no attention layers"),
        ("is_hybrid", "hybrid attention / state-space models are not supported yet"),
    )
    for attr, why in checks:
        if bool(getattr(model_config, attr, False)):
            return why
    return None


def request_limits(model_config=None) -> RequestLimits:
    """What a request to this server may ask for: layer and head indices below the served model's
    counts (from its Hugging Face config; the package-wide caps when unknown), and the operator's head
    profiles (``ATTNSTEER_HEAD_PROFILES``) by name."""
    hf = getattr(model_config, "hf_text_config", None) or getattr(model_config, "hf_config", None)
    layers, heads = getattr(hf, "num_hidden_layers", None), getattr(hf, "num_attention_heads", None)
    return RequestLimits(
        num_layers=int(layers) if isinstance(layers, int) else None,
        num_heads=int(heads) if isinstance(heads, int) else None,
        head_profiles=dict(_PROFILES),
    )


def admit(request, tokenizer=None, model_config=None) -> None:
    """Check one ``EngineCoreRequest``'s steering before it reaches the engine, and salt its
    prefix-cache hash. Raises ``VLLMValidationError`` (a 400 on the server) for bad steering, for
    steering on a platform whose attention backend attnsteer does not replace (GPU, for now), or on
    a model whose attention it cannot steer (`unsteerable`)."""
    from vllm.exceptions import VLLMValidationError
    from vllm.platforms import current_platform

    params = request.sampling_params
    if params is None:
        return
    special = getattr(tokenizer, "all_special_ids", ()) if tokenizer is not None else ()
    try:
        steering = parse_request(
            params.extra_args, request.prompt_token_ids or [], special, request_limits(model_config)
        )
    except (ValueError, TypeError) as e:
        raise VLLMValidationError(f"attnsteer: {e}", parameter="extra_args.attnsteer") from None
    if steering is None:
        return
    if not current_platform.is_cpu():
        raise VLLMValidationError(
            f"attnsteer: steered requests run on vLLM's CPU backend only; this engine runs on "
            f"{current_platform.device_name!r}, whose attention backend attnsteer does not replace yet. Send the "
            "request without attnsteer extra args, or serve it with the Hugging Face path (attnsteer.steer)",
            parameter="extra_args.attnsteer",
        )
    why = unsteerable(model_config)
    if why is not None:
        raise VLLMValidationError(
            f"attnsteer: this model cannot be steered in vLLM: {why}. Send the request without attnsteer extra "
            "args, or use the Hugging Face path (attnsteer.steer)",
            parameter="extra_args.attnsteer",
        )
    salt = request_salt(steering)
    if request.cache_salt is None:
        request.cache_salt = salt
    elif not request.cache_salt.endswith(salt):
        request.cache_salt = f"{request.cache_salt}|{salt}"


def _step(runner, num_reqs: int) -> Step:
    cache = runner.__dict__.setdefault(PARSED, {})
    step = Step()
    qsl = runner.query_start_loc.np[: num_reqs + 1]
    computed = runner.input_batch.num_computed_tokens_cpu[:num_reqs]
    for row, req_id in enumerate(runner.input_batch.req_ids[:num_reqs]):
        state = runner.requests.get(req_id)
        if state is None or state.sampling_params is None:
            continue
        if req_id not in cache:  # (special-token-only spans are refused client-side, by steered_prompt)
            limits = runner.__dict__.get("_attnsteer_limits")
            if limits is None:
                limits = runner.__dict__["_attnsteer_limits"] = request_limits(getattr(runner, "model_config", None))
            cache[req_id] = parse_request(state.sampling_params.extra_args, state.prompt_token_ids, (), limits)
        steering = cache[req_id]
        if steering is not None:
            step.steered[row] = (steering, int(computed[row]), int(qsl[row + 1] - qsl[row]))
    return step
