"""GUIDE's Δ calibrated against an upper-case rewrite, for a few rules, on the embedded model.

python examples/calibrate_delta.py
"""

import torch

import attnsteer

torch.set_num_threads(1)
model, tok = attnsteer.models.load_default(progress=False)
TEXT = (
    "The first bicycles appeared in Germany in 1817, when Karl Drais built a wooden running machine that riders "
    "pushed along with their feet. In the 1860s, French makers fixed pedals directly to the front wheel."
)
print("rule | chosen delta | upper-case gain | GUIDE gains at", [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4])
for rule in [
    "Answer in French.",
    "Start your answer with the word YES.",
    "Use at most twenty words.",
    "Reply in JSON.",
]:
    msgs = [
        {"role": "system", "content": f"<<{rule}>>"},
        {"role": "user", "content": f"{TEXT}\n\nWho built the first bicycle?"},
    ]
    c = attnsteer.calibrate_delta(model, tok, msgs)
    print(rule, round(c.delta, 2), round(c.target_gain, 3), [round(g, 2) for g in c.gains])
