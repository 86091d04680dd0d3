"""Influence per layer and a span-mass heatmap on the embedded SmolLM2-135M-Instruct.

    python examples/influence_plots.py --out docs

writes ``influence.png`` (GUIDE's Influence of a marked system rule at the last prompt token,
unsteered vs GUIDE Δ=1 and Δ=2, with attention rollout) and ``span_mass.png`` (the attention
each layer and head puts on the rule at the last token, unsteered vs SpotLight τ=0.3).
"""

from __future__ import annotations

import argparse
import os

import torch

import attnsteer

TEXT = (
    "The first bicycles appeared in Germany in 1817, when Karl Drais built a wooden running machine that riders "
    "pushed along with their feet. In the 1860s, French makers fixed pedals directly to the front wheel. The safety "
    "bicycle of the 1880s had two wheels of the same size and a chain that drove the rear wheel."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    model, tok = attnsteer.models.load_default(progress=False)
    msgs = [
        {"role": "system", "content": "<<Answer in French.>>"},
        {
            "role": "user",
            "content": f"Read the text and answer the question.\n\nText: {TEXT}\n\nWho built the first bicycle?",
        },
    ]
    enc = attnsteer.highlight(tok, msgs)
    base = attnsteer.influence(model, enc)
    steered = {f"GUIDE Δ={d:g}": attnsteer.influence(model, enc, attnsteer.GUIDE(d)) for d in (1.0, 2.0)}
    base.plot(
        os.path.join(args.out, "influence.png"),
        others=steered,
        title="Influence of 'Answer in French.' at the last prompt token (SmolLM2-135M)",
    )
    sm = attnsteer.span_mass(model, enc, attnsteer.SpotLight(0.3))
    sm.heatmap(os.path.join(args.out, "span_mass.png"))
    last = {"unsteered": base.last()[-1].item(), **{k: v.last()[-1].item() for k, v in steered.items()}}
    print("Influence after the last layer, last token:", {k: f"{v:.3g}" for k, v in last.items()})
    print(
        "span mass at the last token, mean over layers and heads: unsteered "
        f"{sm.table(0).mean():.3f}, SpotLight(0.3) {sm.table(0, steered=True).mean():.3f}"
    )


if __name__ == "__main__":
    main()
