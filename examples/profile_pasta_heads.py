"""Profile PASTA's heads on a model (default: the embedded SmolLM2-135M-Instruct) and save them as JSON.

    python examples/profile_pasta_heads.py --out python/attnsteer/data/pasta_heads_smollm2_135m.json
    python examples/profile_pasta_heads.py --model qwen2.5-coder-0.5b --dtype bfloat16 \
        --out python/attnsteer/data/pasta_heads_qwen2.5_coder_0.5b.json

Each example pairs a marked rule with a reply that follows it; a head's score is the gain in
log-likelihood per token of those replies when PASTA(0.01) steers that head alone.
``--dtype bfloat16`` runs ~4x faster on a CPU with AMX (Qwen2.5-0.5B: ~12 instead of ~50 minutes); its scores
track float32's (per-layer correlation 0.84 and 0.97 on the two layers compared) but are not the same numbers —
the file records the dtype.
"""

from __future__ import annotations

import argparse
import sys

import torch

import attnsteer

TEXT = (
    "The first bicycles appeared in Germany in 1817, when Karl Drais built a wooden running machine that riders "
    "pushed along with their feet. In the 1860s, French makers fixed pedals directly to the front wheel."
)
EXAMPLES = [
    ("<<Answer in French.>>", "Who built the first bicycle?", "Karl Drais a construit la première bicyclette en 1817."),
    (
        "<<Start your answer with the word YES.>>",
        "Did bicycles exist in 1817?",
        "YES, the first bicycles appeared in 1817.",
    ),
    (
        "<<Answer in all capital letters.>>",
        "Where did the first bicycles appear?",
        "THE FIRST BICYCLES APPEARED IN GERMANY.",
    ),
    ("<<Reply in JSON with a key named answer.>>", "When were pedals added?", '{"answer": "in the 1860s"}'),
    (
        "<<End your answer with the exact word GOODBYE.>>",
        "Who fixed pedals to the front wheel?",
        "French makers fixed pedals to the front wheel. GOODBYE",
    ),
    ("<<Answer in at most five words.>>", "What did riders push with?", "Their feet."),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pasta_heads.json")
    ap.add_argument(
        "--model", default="smollm2-135m", help="a model name (attnsteer.models.available()); default the embedded one"
    )
    ap.add_argument("--k", type=int, default=None, help="heads to keep (default: one per layer on average)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    model, tok = attnsteer.models.load(args.model, dtype=dtype)
    examples = [
        {
            "prompt": [{"role": "system", "content": rule}, {"role": "user", "content": f"{TEXT}\n\n{q}"}],
            "target": reply,
        }
        for rule, q, reply in EXAMPLES
    ]
    prof = attnsteer.profile_heads(model, tok, examples, alpha=0.01)
    provenance = {
        "model": args.model,
        "dtype": args.dtype,
        "examples": len(examples),
        "command": "python examples/profile_pasta_heads.py " + " ".join(sys.argv[1:]),
    }
    heads = prof.save(args.out, k=args.k, provenance=provenance)
    print(f"{sum(len(h) for h in heads.values())} heads in {len(heads)} layers -> {args.out}")
    print(heads)


if __name__ == "__main__":
    main()
