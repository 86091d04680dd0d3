"""Marked text → token span masks, from one tokenisation pass with offset mapping.

Markup (the defaults; ``markers=`` changes them, ``markers=None`` takes text verbatim — for
dataset text that contains ``<<`` … ``>>`` of its own, highlighted with ``char_spans=``):

    "Answer in French. <<Use at most 20 words.>>"     weight 1   (GUIDE: + delta)
    "<<+very important+>>"   weight 2        "<<-a hint->>"   weight 0.5
    "a literal \\<<x\\>> stays text"               backslash escapes each marker

The result is a `transformers.BatchEncoding` that ``model(**enc)`` and
``model.generate(**enc)`` accept as is, with the mask kept out of the model keywords as the
attribute ``enc.span_mask`` (B, T) — bool, or float when weights other than 1 are used.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["highlight", "show_spans", "format_spans", "parse_markup", "MarkupError", "DEFAULT_MARKERS"]

# open -> (close, weight). Longer openers are tried first, so "<<+" wins over "<<".
DEFAULT_MARKERS: Dict[str, Tuple[str, float]] = {"<<+": ("+>>", 2.0), "<<-": ("->>", 0.5), "<<": (">>", 1.0)}

CharSpan = Tuple[int, int, float]  # [start, end) in characters, weight


class MarkupError(ValueError):
    """A highlight marker is unbalanced, nested or empty, or a span cannot be placed.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """


def parse_markup(
    text: str, markers: Optional[Dict[str, Tuple[str, float]]] = DEFAULT_MARKERS
) -> Tuple[str, List[CharSpan]]:
    """Strip the markers from ``text``; return the clean text and its character spans.
    ``markers=None`` takes the text verbatim (no spans)."""
    if not markers:
        return text, []
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
                raise MarkupError(
                    f"empty highlight at character {open_at[3]} of the prompt: put text between the markers or remove them"
                )
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
            raise MarkupError(
                f"closing marker {closer!r} at character {i} has no opening marker; escape it as \\{closer} for literal text"
            )
        out.append(text[i])
        i += 1
    if open_at is not None:
        raise MarkupError(
            f"highlight opened at character {open_at[3]} is never closed: add {open_at[1]!r} after the text to highlight"
        )
    return "".join(out), spans


def _token_mask(
    offsets: Sequence[Tuple[int, int]], special: Sequence[int], spans: Sequence[CharSpan], text_len: int, row: int
) -> List[float]:
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
    char_spans: Optional[Sequence[Sequence[Tuple[int, ...]]]] = None,
    markers: Optional[Dict[str, Tuple[str, float]]] = DEFAULT_MARKERS,
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
        char_spans: one list per prompt. For strings: ``(start, end)`` character spans of the
            clean text (after markup removal; with ``markers=None``, of the text as given). For
            chat messages: ``(message_index, start, end)`` spans of that message's content, so
            offsets never depend on the chat template.
        markers: the markup (see the module docstring); ``None`` takes the text verbatim.
        highlight_messages: indices of chat messages to highlight whole (negative indices count
            from the end, as in Python).
        **tokenizer_kwargs: passed to the tokenizer (``padding``, ``truncation``, ``max_length``…).
            Padding defaults to True for batches; left padding is respected.

    Returns:
        ``BatchEncoding`` with ``input_ids``/``attention_mask`` (B, T) and the attribute
        ``span_mask`` (B, T): bool, or float weights (0.5 / 1 / 2) when markup levels are used.
        Special tokens are never span. A prompt of a batch may have no span (its row is
        unsteered); a batch with nothing highlighted at all is an error.

    Example:
        ```python
        enc = attnsteer.highlight(tok, "<<Answer in French.>> What is a cat?")
        enc = attnsteer.highlight(tok, msgs, highlight_messages=[0])  # a whole chat message
        ```

    Guide: ``docs/guides/spans.md``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} has no offset mapping (a slow tokenizer): load a fast one with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    if return_tensors != "pt":
        raise ValueError(
            f"highlight returns PyTorch tensors (return_tensors='pt'); got return_tensors={return_tensors!r}. "
            "Convert the result afterwards if you need another format"
        )
    chat = _is_chat(text_or_messages)
    n_prompts = _count_prompts(text_or_messages)
    if char_spans is not None:
        char_spans = _check_char_spans(char_spans, n_prompts, chat)
    if markers is DEFAULT_MARKERS and (char_spans is not None or highlight_messages is not None):
        _warn_markup(text_or_messages, chat)
    texts, spans = _render(
        tokenizer, text_or_messages, markers, highlight_messages, add_generation_prompt, char_spans if chat else None
    )
    if char_spans is not None and not chat:
        for i, cs in enumerate(char_spans):
            for s, e in cs:
                if not 0 <= s < e <= len(texts[i]):
                    raise MarkupError(f"char span ({s}, {e}) is outside prompt {i} of {len(texts[i])} characters")
                spans[i].append((s, e, 1.0))
    if not any(spans):
        raise MarkupError("nothing is highlighted: mark text with <<...>>, pass char_spans, or highlight_messages")
    kwargs = dict(tokenizer_kwargs)
    kwargs.setdefault("padding", len(texts) > 1)
    kwargs.setdefault("add_special_tokens", not chat)
    enc = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt", **kwargs)
    offsets = enc.pop("offset_mapping").tolist()
    special = enc.pop("special_tokens_mask").tolist()
    attn = enc["attention_mask"].tolist()
    # Special tokens written in the text (a chat template's <|im_start|>) are not flagged by
    # special_tokens_mask, which only knows the tokens the tokenizer adds itself.
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = enc["input_ids"].tolist()
    rows = []
    for i in range(len(texts)):
        sp = [s or (1 - a) or (t in special_ids) for s, a, t in zip(special[i], attn[i], ids[i])]
        rows.append(_token_mask(offsets[i], sp, spans[i], len(texts[i]), i))
    weights = torch.tensor(rows, dtype=torch.float32)
    enc.span_mask = weights.bool() if bool(((weights == 0) | (weights == 1)).all()) else weights
    return enc


def _count_prompts(x) -> int:
    if isinstance(x, str):
        return 1
    if _is_chat(x):
        return 1 if isinstance(x[0], dict) else len(x)
    return len(x)


def _check_char_spans(char_spans, n_prompts: int, chat: bool):
    arity = 3 if chat else 2
    form = "(message_index, start, end)" if chat else "(start, end)"
    example = "char_spans=[[(1, 0, 19)]]" if chat else "char_spans=[[(0, 19)]]"
    if not isinstance(char_spans, (list, tuple)) or any(not isinstance(cs, (list, tuple)) for cs in char_spans):
        raise TypeError(f"char_spans takes one list of {form} spans per prompt, e.g. {example}; got {char_spans!r}")
    if (
        len(char_spans)
        and all(isinstance(x, int) for x in char_spans[0])
        and len(char_spans[0]) == arity
        and not any(isinstance(cs, (list, tuple)) and cs and isinstance(cs[0], (list, tuple)) for cs in char_spans)
    ):
        raise TypeError(
            f"char_spans takes one list of {form} spans per prompt (a list of lists), e.g. {example}; "
            f"got a flat list {list(char_spans)!r}"
        )
    if len(char_spans) != n_prompts:
        raise ValueError(f"char_spans has {len(char_spans)} entries for {n_prompts} prompts: give one list per prompt")
    out = []
    for i, cs in enumerate(char_spans):
        row = []
        for span in cs:
            if not isinstance(span, (list, tuple)) or len(span) != arity or not all(isinstance(v, int) for v in span):
                hint = (
                    " — with chat messages, offsets are per message content: (message_index, start, end)"
                    if chat and isinstance(span, (list, tuple)) and len(span) == 2
                    else ""
                )
                raise TypeError(f"char span {span!r} of prompt {i} is not {form}{hint}")
            if span[-2] >= span[-1]:
                raise MarkupError(f"char span {tuple(span)!r} of prompt {i} is reversed or empty: start must be < end")
            row.append(tuple(span))
        out.append(row)
    return out


def _warn_markup(x, chat: bool) -> None:
    texts = [x] if isinstance(x, str) else list(x)
    if chat:
        convs = [texts] if isinstance(texts[0], dict) else texts
        texts = [m["content"] for conv in convs for m in conv]
    if any("<<" in t and ">>" in t for t in texts):
        warnings.warn(
            "attnsteer.highlight: the text contains <<...>> markup, which is parsed as highlights (and its "
            "brackets removed) besides char_spans/highlight_messages; pass markers=None to take the text "
            "verbatim",
            stacklevel=3,
        )


def _is_chat(x) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and (
            isinstance(x[0], dict) or (isinstance(x[0], (list, tuple)) and len(x[0]) > 0 and isinstance(x[0][0], dict))
        )
    )


def _render(tokenizer, x, markers, highlight_messages, add_generation_prompt, chat_spans=None):
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
    for c_idx, conv in enumerate(convs):
        n = len(conv)
        whole = set()
        for h in highlight_messages or ():
            if not -n <= int(h) < n:
                raise IndexError(f"highlight_messages index {h} is out of range for a conversation of {n} messages")
            whole.add(int(h) % n)
        clean_msgs, marked = [], []
        for m_idx, msg in enumerate(conv):
            clean, sp = parse_markup(msg["content"], markers)
            clean_msgs.append(dict(msg, content=clean))
            if m_idx in whole:
                sp = [(0, len(clean), 1.0)]
            marked.append(list(sp))
        for m_idx, a, b in chat_spans[c_idx] if chat_spans is not None else ():
            if not -n <= m_idx < n:
                raise IndexError(f"char span message index {m_idx} is out of range for a conversation of {n} messages")
            m_idx %= n
            if not 0 <= a < b <= len(clean_msgs[m_idx]["content"]):
                raise MarkupError(
                    f"char span ({a}, {b}) is outside message {m_idx} of {len(clean_msgs[m_idx]['content'])} characters"
                )
            marked[m_idx].append((a, b, 1.0))
        rendered = tokenizer.apply_chat_template(
            clean_msgs, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        # Locate each message's content in the rendered prompt, in order.
        pos, row_spans = 0, []
        for msg, sp in zip(clean_msgs, marked):
            at = rendered.find(msg["content"], pos)
            if at < 0:
                raise MarkupError(
                    "the chat template changed a message's text; highlight with char_spans on the rendered prompt instead"
                )
            row_spans.extend((at + s, at + e, w) for s, e, w in sp)
            pos = at + len(msg["content"])
        texts.append(rendered)
        spans.append(row_spans)
    return texts, spans


def format_spans(tokenizer, enc, *, row: Optional[int] = None) -> str:
    """Each prompt with its highlighted tokens in ``[[...]]`` (weights ≠ 1 as ``[[...]]×w``).

    Runs of tokens are decoded together, so a character split across tokens stays whole.

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
    ids = enc["input_ids"]
    mask = enc.span_mask
    B = ids.shape[0]
    if row is not None and not -B <= row < B:
        raise IndexError(f"row {row} is out of range for an encoding of {B} prompt{'s' if B != 1 else ''}")
    out_rows = []
    for b in range(B) if row is None else [row % B]:
        pieces, cur, cur_w = [], [], None
        am = enc["attention_mask"][b] if "attention_mask" in enc else torch.ones_like(ids[b])
        for t in range(ids.shape[1]):
            if not am[t]:
                continue
            w = float(mask[b, t])
            if w != (cur_w or 0.0) and cur:
                pieces.append(_wrap(tokenizer.decode(cur), cur_w))
                cur = []
            cur.append(int(ids[b, t]))
            cur_w = w
        if cur:
            pieces.append(_wrap(tokenizer.decode(cur), cur_w))
        out_rows.append(f"[{b}] " + "".join(pieces))
    return "\n".join(out_rows)


def show_spans(tokenizer, enc, *, row: Optional[int] = None, file=None) -> None:
    """Print `format_spans` (returns None, so a notebook cell shows it once).

    Guide: ``docs/guides/spans.md`` (with a runnable example).
    """
    print(format_spans(tokenizer, enc, row=row), file=file)


def _wrap(s: str, w: Optional[float]) -> str:
    if not w:
        return s
    return f"[[{s}]]" if w == 1.0 else f"[[{s}]]×{w:g}"
