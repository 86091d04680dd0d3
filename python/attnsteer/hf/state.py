"""The steering state of one ``steer()`` block, and its public face `Steering`.

The state belongs to the model object (``generate`` in a worker thread — the
``TextIteratorStreamer`` pattern — is steered too). Code that extends a running block (DIRECTER's
trials, Influence's probe) goes through `active` and the methods of `Steering`,
never through the attributes the adapter reads.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Iterator, Optional

import torch

from ..methods import Method, expand_rows

__all__ = ["Steering", "active"]


class Steering:
    """An active ``steer()`` block on one model.

    Attributes:
        method: the method the attention layers apply (swap it with `use`).
        span_mask: ``(B, T_prompt)`` float32 span weights.
        prompt_length: ``T_prompt``.
        num_layers: decoder layers of the model (0 when unknown).
    """

    def __init__(self, method: Method, span_mask: torch.Tensor, prompt_length: int, num_layers: int = 0):
        self.method = method
        self.span_mask = span_mask
        self.prompt_length = prompt_length
        self.num_layers = num_layers
        self.first_token: Optional[torch.Tensor] = None  # (B,) first real token under left padding
        self.prompt_ids: Optional[torch.Tensor] = None  # (B, T_prompt) when steer() got an encoding
        self.cache: dict = {}  # per-forward contexts, see attention._context
        self.probe: Any = None  # attnsteer.influence's probe during its forward
        # threads (see _one_thread)
        self.lock = threading.Condition()
        self.owner: Optional[int] = None  # thread running a steered forward / generate
        self.depth = 0
        self.opener = threading.get_ident()  # the thread that opened the steer() block
        self.generating = 0  # generate calls running (a forward longer than the prompt is legitimate there)
        self.allow_prefix = False  # a forward over the prompt one token short is expected

    @contextlib.contextmanager
    def use(self, method: Method) -> Iterator["Steering"]:
        """Apply ``method`` instead of the block's method inside this context (restored on exit)."""
        if not isinstance(method, Method):
            raise TypeError(f"Steering.use takes an attnsteer method; got {type(method).__name__}")
        if hasattr(method, "edits_layer") or hasattr(self.method, "edits_layer"):
            raise TypeError(
                "SEKA / PRISM edit keys through hooks that steer() installs for the block's own method; "
                "open a separate attnsteer.steer(model, method, spans=...) block instead of Steering.use"
            )
        before = self.method
        self.method = method
        try:
            yield self
        finally:
            self.method = before

    @contextlib.contextmanager
    def prompt_prefix(self) -> Iterator["Steering"]:
        """Allow forwards over the prompt without its last token (DIRECTER prefills that way)."""
        before = self.allow_prefix
        self.allow_prefix = True
        try:
            yield self
        finally:
            self.allow_prefix = before

    @contextlib.contextmanager
    def probing(self, probe: Any) -> Iterator["Steering"]:
        """Hand every attention layer's op call to ``probe.attend(run_op, key, value)`` (Influence)."""
        self.probe = probe
        try:
            yield self
        finally:
            self.probe = None


def active(model) -> Steering:
    """The `Steering` of the ``steer()`` block ``model`` is in; raises outside one."""
    state = getattr(model, "_attnsteer_state", None)
    if state is None:
        raise RuntimeError(
            "this model is not inside an attnsteer.steer() block; open one with "
            "`with attnsteer.steer(model, method, spans=enc):`"
        )
    return state


def _one_thread(state: Steering, fn, name: str, before_forward=None):
    """Wrap ``model.forward`` / ``model.generate`` so two threads cannot run the steered model at
    once (the per-forward span cache and the prompt positions belong to one generation).

    The rule: the block steers calls from the thread that opened it, and ``generate`` from any
    one thread at a time (the ``TextIteratorStreamer`` pattern runs it in a worker); a bare
    forward from another thread is refused rather than silently steered."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        me = threading.get_ident()
        if name == "forward" and before_forward is not None:
            before_forward(kwargs)
            _check_prompt(state, args, kwargs)
        with state.lock:
            if name == "forward" and me != state.opener and state.owner != me:
                raise RuntimeError(
                    "attnsteer: this model is inside a steer() block opened by another thread, so a forward from "
                    "this thread would be steered without asking. Call the model from the thread that opened the "
                    "block, run model.generate in the worker (the TextIteratorStreamer pattern), or give this "
                    "thread its own copy of the model"
                )
            if state.owner not in (None, me):
                raise RuntimeError(
                    "attnsteer: this steered model is already running forward/generate in another thread; "
                    "steering one model from two threads at once is not supported. Run one generation at a "
                    "time (generate in one worker thread with a TextIteratorStreamer is fine), or give each "
                    "thread its own copy of the model and its own steer() block"
                )
            state.owner = me
            state.depth += 1
            state.generating += name == "generate"
        try:
            return fn(*args, **kwargs)
        finally:
            with state.lock:
                state.depth -= 1
                state.generating -= name == "generate"
                if state.depth == 0:
                    state.owner = None
                    state.lock.notify_all()

    return wrapper


def _check_prompt(state: Steering, args, kwargs) -> None:
    """A forward that starts a sequence (empty cache) must run the prompt the span mask was made
    for — or that prompt followed by generated tokens (generation without a cache)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return  # inputs_embeds: nothing to compare
    pkv = kwargs.get("past_key_values")
    if pkv is not None and hasattr(pkv, "get_seq_length") and pkv.get_seq_length() > 0:
        return  # cached decoding
    T, T0 = ids.shape[1], state.prompt_length
    if T == T0 - 1 and state.allow_prefix:
        return
    # Longer than the prompt: generation without a cache re-runs prompt + generated tokens.
    ok = T == T0 or (T > T0 and state.generating > 0)
    if ok and state.prompt_ids is not None:
        ref = state.prompt_ids.to(ids.device)
        if ids.shape[0] != ref.shape[0]:
            ref = expand_rows(ref, ids.shape[0], "the prompt")
        ok = torch.equal(ids[:, :T0], ref)
    if not ok:
        what = f"{T} tokens" if T != T0 else "other tokens"
        raise ValueError(
            f"attnsteer: this forward runs {what}, but the span mask given to steer() was made for a {T0}-token "
            "prompt, so the span would land on the wrong tokens. Steer the prompt you run: "
            "steer(model, method, spans=enc) with enc = attnsteer.highlight(tokenizer, that prompt), then "
            "model(**enc) / model.generate(**enc)"
        )
