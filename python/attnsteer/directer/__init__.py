"""DIRECTER (arXiv 2603.06745): layer-sensitivity ranking and plausibility-guided decoding.

Per step (arXiv 2603.06745, as the authors' code does it):

1. raw forward of the newest token — its K/V go into the cache, which is always the unsteered one;
2. top-2 gate on the raw distribution p: if ``p(second) < beta * p(first)`` no other token can be
   plausible, so the raw argmax is emitted without steering;
3. otherwise a *trial*: the same token again, over the same cache, with the span keys scaled by
   ``alpha`` (or any other method) on a set of candidate layers — inside the attention op, so the
   cache is neither copied nor edited; the trial's own K/V are thrown away;
4. accept the steered argmax ĩ if ``p(ĩ) >= beta * p(i*)``; else keep the ⌊L/2^k⌋ most sensitive
   layers and retry (never a single layer, at most ``max_trials``), then fall back to i*.

The prompt is prefilled without its last token, so the first generated token can be steered.
Every row of a batch decides on its own (per-row layer sets through per-row query masks — the
`attnsteer.directer.cache.RowLayers` method wrapper, swapped into the ``steer()`` block
with `attnsteer.hf.Steering.use`), and rows finish independently.

Layout: `.ranking` (layer sensitivity), `.decoding` (the gate and trials),
`.cache` (forwards over the unsteered cache, the trial method wrapper).

Usage::

    enc = attnsteer.highlight(tok, messages)
    ids = model.generate(**enc, custom_generate=attnsteer.Directer(), spans=enc, max_new_tokens=64)
    # or: attnsteer.generate(model, tok, messages, method=attnsteer.Directer(), max_new_tokens=64)
"""

from .cache import RowLayers
from .decoding import Directer, DirecterStats
from .ranking import LayerRanking, rank_layers

__all__ = ["Directer", "DirecterStats", "LayerRanking", "rank_layers", "RowLayers"]
