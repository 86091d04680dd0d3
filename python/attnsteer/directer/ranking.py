"""DIRECTER's layer-sensitivity ranking (arXiv 2603.06745): which layers to steer first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..methods import Method
from .cache import forward, peek, prefill

__all__ = ["LayerRanking", "rank_layers", "rank_after_prefill"]


@dataclass
class LayerRanking:
    """Layer sensitivity per prompt row.

    Attributes:
        sensitivity: ``(B, L)`` float — higher = steering this layer moves the model more.
        order: ``(B, L)`` long — layer indices by descending sensitivity.
        variant: ``"paper"`` or ``"released"`` (see `rank_layers`).

    Guide: ``docs/guides/directer.md`` (with a runnable example).
    """

    sensitivity: torch.Tensor
    order: torch.Tensor
    variant: str = "paper"

    @classmethod
    def from_order(cls, order: Union[Sequence[int], torch.Tensor], batch: int = 1) -> "LayerRanking":
        """A fixed ranking (e.g. computed once per model) shared by every row."""
        o = torch.as_tensor(order, dtype=torch.long)
        if o.dim() == 1:
            o = o[None].expand(batch, -1)
        L = o.shape[1]
        if not torch.equal(o.sort(dim=1).values, torch.arange(L).expand_as(o)):
            raise ValueError(f"a layer ranking must be a permutation of 0..{L - 1} per row; got {o.tolist()}")
        sens = torch.empty(o.shape, dtype=torch.float32)
        sens.scatter_(1, o, torch.arange(L, 0, -1, dtype=torch.float32).expand_as(o).contiguous())
        return cls(sens, o.contiguous(), "given")

    def mean(self) -> "LayerRanking":
        """One ranking shared by every row (mean sensitivity over the rows), e.g. to rank a model
        once on a few prompts and reuse it with ``Directer(ranking=...)`` for any batch size."""
        sens = self.sensitivity.float().mean(dim=0, keepdim=True)
        return LayerRanking(sens, sens.argsort(dim=1, descending=True, stable=True), self.variant)

    def plot(self, row: int = 0, ax=None, path: Optional[str] = None):
        """Bar chart of the sensitivity of every layer (``row`` of the batch); saved to ``path`` if given."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 3))
        s = self.sensitivity[row].float().cpu()
        top = set(self.order[row, : max(2, len(s) // 2)].tolist())
        ax.bar(range(len(s)), s.numpy(), color=["tab:orange" if i in top else "tab:blue" for i in range(len(s))])
        ax.set_xlabel("layer")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"DIRECTER layer sensitivity ({self.variant}); orange = top half")
        if path is not None:
            (fig or ax.figure).savefig(path, dpi=120, bbox_inches="tight")
        return ax

    def _rows(self, batch: int) -> torch.Tensor:
        o = self.order
        if o.shape[0] == batch:
            return o
        if o.shape[0] == 1:
            return o.expand(batch, -1)
        raise ValueError(f"the layer ranking has {o.shape[0]} rows but the batch has {batch}")


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def _sensitivity(
    pre0: torch.Tensor, post0: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, variant: str
) -> torch.Tensor:
    """pre0/post0: (L, B, d) unperturbed; pre/post: (L_perturbed, L, B, d). Returns (B, L)."""
    base = _cosine_distance(pre0, post0)  # (L, B)
    cross_post = _cosine_distance(pre0[None], post)  # d(H_pre^j, H_post^{j,l})  (l, j, B)
    cross_pre = _cosine_distance(pre, post0[None])  # d(H_pre^{j,l}, H_post^j)
    if variant == "paper":
        D = (cross_post - base[None]) + (cross_pre - base[None])
        return D.mean(dim=1).transpose(0, 1).float()  # mean over measured layers j -> score of l
    D = (cross_post + cross_pre).clamp_min(0)  # released code: no baseline, clamped,
    return D.mean(dim=0).transpose(0, 1).float()  # averaged over perturbed layers l -> score of j


def rank_after_prefill(model, steering, cache, token, attention_mask, variant: str, progress: bool) -> LayerRanking:
    """Sensitivity of every layer, from L + 1 single-token forwards of ``token`` over the prefill cache."""
    from .._progress import tqdm
    from ..hf import attention_modules

    L, B = steering.num_layers, token.shape[0]
    modules = {m.layer_idx: m for m in attention_modules(model)}
    captured: Dict[int, tuple] = {}

    def hook(module, args, kwargs, output):
        h = kwargs.get("hidden_states", args[0] if args else None)
        captured[module.layer_idx] = (h[:, -1].detach(), output[0][:, -1].detach())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
    length = cache.get_seq_length()
    try:

        def run(row_layers):
            captured.clear()
            with peek(cache, length):
                forward(model, steering, token, attention_mask, cache, row_layers)
            pre = torch.stack([captured[j][0] for j in range(L)])
            post = torch.stack([captured[j][1] for j in range(L)])
            return pre, post

        pre0, post0 = run(None)
        pres, posts = [], []
        for layer in tqdm(range(L), desc="ranking layers", disable=not progress):
            one = torch.zeros(B, L, dtype=torch.bool, device=token.device)
            one[:, layer] = True
            pre, post = run(one)
            pres.append(pre)
            posts.append(post)
    finally:
        for h in handles:
            h.remove()
    sens = _sensitivity(pre0, post0, torch.stack(pres), torch.stack(posts), variant).cpu()
    return LayerRanking(sens, sens.argsort(dim=1, descending=True, stable=True), variant)


@torch.no_grad()
def rank_layers(
    model,
    inputs: Any,
    *,
    alpha: float = 100.0,
    method: Optional[Method] = None,
    variant: str = "paper",
    progress: bool = True,
) -> LayerRanking:
    """Rank the layers of ``model`` by how much steering each one alone moves the model
    (arXiv 2603.06745).

    The prompt is prefilled without its last token; that token is then run once unsteered and
    once per layer ℓ with the span keys scaled by ``alpha`` at ℓ only. With ``H_pre^j`` the
    attention input of layer j (after its norm) and ``H_post^j`` its output (after o_proj), and
    d the cosine distance::

        D_j(ℓ) = [d(H_pre^j, H_post^{j,ℓ}) − d(H_pre^j, H_post^j)] + [d(H_pre^{j,ℓ}, H_post^j) − d(H_pre^j, H_post^j)]
        sensitivity(ℓ) = mean_j D_j(ℓ)                      (variant="paper")

    ``variant="released"`` follows the authors' code: no baseline terms, clamped at 0, and
    averaged over the perturbed layers ℓ instead of the measured layers j, so the score of
    layer j is how much j's own input/output pair moves when *any* layer is steered.

    Args:
        inputs: the encoding from `attnsteer.highlight` (``input_ids``, ``attention_mask``, ``span_mask``).
        method: the method a trial applies (default: key scaling by ``alpha``).
    Returns:
        `LayerRanking` with ``sensitivity`` and ``order`` of shape ``(B, L)``.
    """
    if variant not in ("paper", "released"):
        raise ValueError(f"variant must be 'paper' or 'released'; got {variant!r}")
    from ..hf import active
    from ..hf import steer as steer_ctx
    from .decoding import Directer, check_model, span_mask_for

    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    span = span_mask_for(inputs, input_ids)
    check_model(model, input_ids.shape[1])
    method = Directer(alpha=alpha, method=method).trial_method()
    with steer_ctx(model, method, spans=span):
        steering = active(model)
        cache = prefill(model, steering, input_ids, attention_mask)
        return rank_after_prefill(model, steering, cache, input_ids[:, -1:], attention_mask, variant, progress)
