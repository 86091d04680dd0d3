"""``attnsteer.generate``: highlight, steer and generate in one call."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from .config import SteeringConfig, resolve_method
from .directer import Directer
from .hf import steer
from .methods import Method
from .spa import SPA
from .spans import highlight

__all__ = ["generate"]


def generate(
    model,
    tokenizer,
    prompt_or_messages,
    method: Optional[Union[Method, Directer, SPA, SteeringConfig]] = None,
    *,
    char_spans=None,
    highlight_messages: Optional[Sequence[int]] = None,
    skip_prompt: bool = True,
    **generate_kwargs,
) -> Union[str, List[str]]:
    """Generate from a marked prompt (or a batch of them), steered by ``method``.

    Args:
        prompt_or_messages: a string with ``<<...>>`` markup, a list of them, chat messages or a
            list of conversations (see `attnsteer.highlight`).
        method: a steering method or `attnsteer.Directer` (plausibility-guided decoding,
            greedy; its statistics land in ``method.stats``), `attnsteer.SPA` (logit-level: a second
            pass with the highlight hidden, mixed into the logits; greedy or sampling), a `attnsteer.SteeringConfig`
            (e.g. ``attnsteer.recommended(model)``); None generates unsteered (markup is still removed).
        **generate_kwargs: passed to ``model.generate`` (``max_new_tokens``, ``do_sample``…).

    Returns:
        the generated text for one prompt, a list of texts for a batch. With
        ``num_return_sequences=n > 1`` each prompt gives a list of its ``n`` texts: one prompt →
        ``[n texts]``, a batch → ``[[n texts] per prompt]``.

    Example:
        ```python
        text = attnsteer.generate(model, tok, "<<Answer in French.>> Name a fruit.",
                                  attnsteer.recommended(model), max_new_tokens=20)
        ```

    Guide: ``docs/guides/spans.md``.
    """
    method = resolve_method(method)
    enc = highlight(tokenizer, prompt_or_messages, char_spans=char_spans, highlight_messages=highlight_messages)
    enc = enc.to(model.device) if hasattr(enc, "to") else enc
    generate_kwargs.setdefault(
        "pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    with torch.no_grad():
        if method is None:
            out = model.generate(**enc, **generate_kwargs)
        elif isinstance(method, Directer):
            generate_kwargs.setdefault("do_sample", False)
            out = model.generate(**enc, custom_generate=method, spans=enc, **generate_kwargs)
        else:  # an attention method, a key-editing one, or SPA (its batch of two)
            with steer(model, method, spans=enc):
                out = model.generate(**enc, **generate_kwargs)
    if skip_prompt:
        out = out[:, enc["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    n = int(generate_kwargs.get("num_return_sequences") or 1)
    if n > 1:  # transformers returns the n sequences of each prompt next to each other
        texts = [texts[i : i + n] for i in range(0, len(texts), n)]
    single = isinstance(prompt_or_messages, str) or (
        isinstance(prompt_or_messages, (list, tuple)) and prompt_or_messages and isinstance(prompt_or_messages[0], dict)
    )
    return texts[0] if single else texts
