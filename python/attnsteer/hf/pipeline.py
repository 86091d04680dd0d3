"""``steer_pipeline``: steer a ``pipeline("text-generation")`` whose inputs carry markup."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch

from ..methods import Method
from . import check_supported, steer

__all__ = ["steer_pipeline"]


@contextlib.contextmanager
def steer_pipeline(pipe, method: Method) -> Iterator[Any]:
    """Steer a ``pipeline("text-generation")`` whose inputs carry ``<<markup>>``.

    The markup is removed and its span resolved per call, from the very tokens the pipeline
    feeds the model (strings or chat messages)::

        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        with attnsteer.steer_pipeline(pipe, attnsteer.GUIDE(2.0)):
            pipe("<<Answer in French.>> What is a cat?", max_new_tokens=20)

    Batched calls (``batch_size=N``) work: the pipeline pads each prompt's span mask like its
    ``input_ids`` (left), so every row keeps its own span.
    """
    from ..spans import _is_chat, highlight, parse_markup

    check_supported(pipe.model)
    original_preprocess, original_forward = pipe.preprocess, pipe._forward

    def clean(prompt):
        if isinstance(prompt, str):
            return parse_markup(prompt)[0]
        if _is_chat(prompt) and isinstance(prompt[0], dict):
            return [dict(m, content=parse_markup(m["content"])[0]) for m in prompt]
        raise TypeError("steer_pipeline takes a string or a list of chat messages per call")

    def preprocess(prompt_text, *args, **kwargs):
        raw = getattr(prompt_text, "messages", prompt_text)  # the pipeline wraps chats in a Chat object
        inputs = original_preprocess(
            type(prompt_text)(clean(raw)) if hasattr(prompt_text, "messages") else clean(raw), *args, **kwargs
        )
        ids = inputs["input_ids"]
        texts = [raw] if isinstance(raw, str) else [m["content"] for m in raw]
        if not any(parse_markup(t)[1] for t in texts):
            # As highlight() does for a row of a batch: no marks, no steering for this prompt — said aloud.
            warnings.warn("attnsteer.steer_pipeline: a prompt has no <<markup>>, so it runs unsteered", stacklevel=2)
            inputs["_attnsteer_span_mask"] = torch.zeros(ids.shape, dtype=torch.bool)
            return inputs
        for special in (False, True):
            enc = highlight(pipe.tokenizer, raw, add_special_tokens=special)
            if enc["input_ids"].shape == ids.shape and torch.equal(enc["input_ids"].to(ids.device), ids):
                inputs["_attnsteer_span_mask"] = enc.span_mask
                return inputs
        raise RuntimeError(
            "attnsteer: the pipeline tokenised the prompt differently from attnsteer.highlight; "
            "steer the model directly with attnsteer.highlight + attnsteer.steer"
        )

    def _forward(model_inputs, *args, **kwargs):
        span = model_inputs.pop("_attnsteer_span_mask", None)
        if span is None:
            return original_forward(model_inputs, *args, **kwargs)
        if span.shape != model_inputs["input_ids"].shape:  # the collate function pads both alike
            raise RuntimeError(
                f"attnsteer: the pipeline batched span masks {tuple(span.shape)} that do not match "
                f"input_ids {tuple(model_inputs['input_ids'].shape)}; call the pipeline with batch_size=1"
            )
        with steer(pipe.model, method, spans=span):
            return original_forward(model_inputs, *args, **kwargs)

    pipe.preprocess, pipe._forward = preprocess, _forward
    try:
        yield pipe
    finally:
        pipe.preprocess, pipe._forward = original_preprocess, original_forward
