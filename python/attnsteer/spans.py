"""Marked text → token span masks, from one tokenisation pass with offset mapping.

Markup (the defaults; ``markers=`` changes them):

    "Answer in French. <<Use at most 20 words.>>"     weight 1   (GUIDE: + delta)
    "<<+very important+>>"   weight 2        "<<-a hint->>"   weight 0.5
    "a literal \\<< stays text"                     backslash escapes a marker

The result is a :class:`transformers.BatchEncoding` that ``model(**enc)`` and
``model.generate(**enc)`` accept as is, with the mask kept out of the model keywords as the
attribute ``enc.span_mask`` (B, T) — bool, or float when weights other than 1 are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["highlight", "show_spans", "parse_markup", "MarkupError", "DEFAULT_MARKERS"]

# open -> (close, weight). Longer openers are tried first, so "<<+" wins over "<<".
DEFAULT_MARKERS: Dict[str, Tuple[str, float]] = {"<<+": ("+>>", 2.0), "<<-": ("->>", 0.5), "<<": (">>", 1.0)}

CharSpan = Tuple[int, int, float]  # [start, end) in characters, weight


class MarkupError(ValueError):
    """A highlight marker is unbalanced, nested or empty, or a span cannot be placed."""


def parse_markup(text: str, markers: Optional[Dict[str, Tuple[str, float]]] = None) -> Tuple[str, List[CharSpan]]:
    """Strip the markers from ``text``; return the clean text and its character spans."""
    markers = DEFAULT_MARKERS if markers is None else markers
    openers = sorted(markers, key=len, reverse=True)
    closers = sorted({c for c, _ in markers.values()}, key=len, reverse=True)
    out: List[str] = []
    spans: List[CharSpan] = []
    open_at: Optional[Tuple[int, str, float, int]] = None  # (clean start, closer, weight, raw pos)
    i = 0
    n = len(text)
    while i < n:
        if text[i] == "\\" and i + 1 < n and any(text.startswith(m, i + 1) for m in openers + closers):
            tok = next(m for m in openers + closers if text.startswith(m, i + 1))
            out.append(tok)
            i += 1 + len(tok)
            continue
        if open_at is not None and text.startswith(open_at[1], i):
            start = open_at[0]
            end = sum(len(s) for s in out)
            if end == start or not "".join(out)[start:end].strip():
                raise MarkupError(f"empty highlight at character {open_at[3]} of the prompt: put text between the markers or remove them")
            spans.append((start, end, open_at[2]))
            i += len(open_at[1])
            open_at = None
            continue
        opener = next((m for m in openers if text.startswith(m, i)), None)
        if opener is not None:
            if open_at is not None:
                raise MarkupError(
                    f"nested highlight at character {i}: a marker opened at character {open_at[3]} is still open. "
                    f"Close it first, or escape a literal marker as \\{opener}"
                )
            close, weight = markers[opener]
            open_at = (sum(len(s) for s in out), close, float(weight), i)
            i += len(opener)
            continue
        closer = next((c for c in closers if text.startswith(c, i)), None)
        if closer is not None and open_at is None:
            raise MarkupError(f"closing marker {closer!r} at character {i} has no opening marker; escape it as \\{closer} for literal text")
        out.append(text[i])
        i += 1
    if open_at is not None:
        raise MarkupError(
            f"highlight opened at character {open_at[3]} is never closed: add {open_at[1]!r} after the text to highlight"
        )
    return "".join(out), spans


def _token_mask(offsets: Sequence[Tuple[int, int]], special: Sequence[int], spans: Sequence[CharSpan],
                text_len: int, row: int) -> List[float]:
    mask = [0.0] * len(offsets)
    for start, end, weight in spans:
        hit = False
        for t, (a, b) in enumerate(offsets):
            if special[t] or b <= a:
                continue
            if a < end and b > start:
                mask[t] = max(mask[t], weight)
                hit = True
        if not hit:
            if start >= text_len or end > text_len:
                raise MarkupError(f"span [{start}, {end}) of prompt {row} lies outside its {text_len} characters")
            raise MarkupError(
                f"span [{start}, {end}) of prompt {row} covers no token: it was probably cut off by truncation "
                "(raise max_length, or move the highlighted text earlier)"
            )
    return mask


def highlight(
    tokenizer,
    text_or_messages: Union[str, Sequence[str], Sequence[dict], Sequence[Sequence[dict]]],
    *,
    char_spans: Optional[Sequence[Sequence[Tuple[int, int]]]] = None,
    markers: Optional[Dict[str, Tuple[str, float]]] = None,
    highlight_messages: Optional[Sequence[int]] = None,
    add_generation_prompt: bool = True,
    return_tensors: str = "pt",
    **tokenizer_kwargs,
):
    """Tokenise prompts and mark the highlighted tokens.

    Args:
        tokenizer: a fast (offset-mapping) Hugging Face tokenizer.
        text_or_messages: a string, a list of strings, chat messages (a list of
            ``{"role", "content"}`` dicts, rendered with the chat template) or a list of them.
            Markup inside strings and message contents marks spans.
        char_spans: per prompt, explicit ``(start, end)`` character spans of the clean text
            (for strings without markup).
        highlight_messages: indices of chat messages to highlight whole.
        **tokenizer_kwargs: passed to the tokenizer (``padding``, ``truncation``, ``max_length``…).
            Padding defaults to True for batches; left padding is respected.

    Returns:
        ``BatchEncoding`` with ``input_ids``/``attention_mask`` (B, T) and the attribute
        ``span_mask`` (B, T): bool, or float weights (0.5 / 1 / 2) when markup levels are used.
        Special tokens are never span.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} has no offset mapping (a slow tokenizer): load a fast one with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    texts, spans = _render(tokenizer, text_or_messages, markers, highlight_messages, add_generation_prompt)
    if char_spans is not None:
        if len(char_spans) != len(texts):
            raise ValueError(f"char_spans has {len(char_spans)} entries for {len(texts)} prompts")
        for i, cs in enumerate(char_spans):
            for s, e in cs:
                if not 0 <= s < e <= len(texts[i]):
                    raise MarkupError(f"char span ({s}, {e}) is outside prompt {i} of {len(texts[i])} characters")
                spans[i].append((s, e, 1.0))
    if not any(spans):
        raise MarkupError("nothing is highlighted: mark text with <<...>>, pass char_spans, or highlight_messages")
    kwargs = dict(tokenizer_kwargs)
    kwargs.setdefault("padding", len(texts) > 1)
    kwargs.setdefault("add_special_tokens", not _is_chat(text_or_messages))
    enc = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors=return_tensors, **kwargs)
    offsets = enc.pop("offset_mapping").tolist()
    special = enc.pop("special_tokens_mask").tolist()
    attn = enc["attention_mask"].tolist()
    rows = []
    for i in range(len(texts)):
        sp = [s or (1 - a) for s, a in zip(special[i], attn[i])]
        rows.append(_token_mask(offsets[i], sp, spans[i], len(texts[i]), i))
    weights = torch.tensor(rows, dtype=torch.float32)
    enc.span_mask = weights.bool() if bool(((weights == 0) | (weights == 1)).all()) else weights
    return enc


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and (isinstance(x[0], dict) or (isinstance(x[0], (list, tuple)) and len(x[0]) > 0 and isinstance(x[0][0], dict)))


def _render(tokenizer, x, markers, highlight_messages, add_generation_prompt):
    if isinstance(x, str):
        x = [x]
    if not _is_chat(x):
        if highlight_messages is not None:
            raise ValueError("highlight_messages needs chat messages (a list of {'role', 'content'} dicts)")
        texts, spans = [], []
        for t in x:
            clean, sp = parse_markup(t, markers)
            texts.append(clean)
            spans.append(sp)
        return texts, spans
    convs = [x] if isinstance(x[0], dict) else list(x)
    texts, spans = [], []
    for conv in convs:
        clean_msgs, marked = [], []
        for m_idx, msg in enumerate(conv):
            clean, sp = parse_markup(msg["content"], markers)
            clean_msgs.append(dict(msg, content=clean))
            if highlight_messages is not None and m_idx in highlight_messages:
                sp = [(0, len(clean), 1.0)]
            marked.append(sp)
        rendered = tokenizer.apply_chat_template(clean_msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        # Locate each message's content in the rendered prompt, in order.
        pos, row_spans = 0, []
        for msg, sp in zip(clean_msgs, marked):
            at = rendered.find(msg["content"], pos)
            if at < 0:
                raise MarkupError("the chat template changed a message's text; highlight with char_spans on the rendered prompt instead")
            row_spans.extend((at + s, at + e, w) for s, e, w in sp)
            pos = at + len(msg["content"])
        texts.append(rendered)
        spans.append(row_spans)
    return texts, spans


def show_spans(tokenizer, enc, *, row: Optional[int] = None, file=None) -> str:
    """Print each prompt with its highlighted tokens in ``[[...]]`` (weights ≠ 1 as ``[[...]]×w``).

    Returns the printed text, so notebooks can also display it."""
    ids = enc["input_ids"]
    mask = enc.span_mask
    out_rows = []
    for b in range(ids.shape[0]) if row is None else [row]:
        pieces, cur, cur_w = [], [], None
        am = enc["attention_mask"][b] if "attention_mask" in enc else torch.ones_like(ids[b])
        for t in range(ids.shape[1]):
            if not am[t]:
                continue
            w = float(mask[b, t])
            piece = tokenizer.decode([int(ids[b, t])])
            if w != (cur_w or 0.0) and cur:
                pieces.append(_wrap("".join(cur), cur_w))
                cur = []
            cur.append(piece)
            cur_w = w
        if cur:
            pieces.append(_wrap("".join(cur), cur_w))
        out_rows.append(f"[{b}] " + "".join(pieces))
    text = "\n".join(out_rows)
    print(text, file=file)
    return text


def _wrap(s: str, w: Optional[float]) -> str:
    if not w:
        return s
    return f"[[{s}]]" if w == 1.0 else f"[[{s}]]×{w:g}"
