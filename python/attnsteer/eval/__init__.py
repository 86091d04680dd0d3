"""Does steering help? IFEval, long-context rule retention, fluency and strength sweeps.

Command line (``attnsteer eval …``; every run is resumable, results land in ``--out``):

- ``ifeval``: the 541 IFEval prompts (or the fixed ``--split dev|test``) through a model with
  each ``--method`` spec, scored with lm-eval's checkers (`.checkers`), highlighted by a
  ``--strategy`` (`.ifeval`), with fluency figures (`.fluency`).
- ``retention``: a checkable rule before/after a long document (`.retention`).
- ``sweep``: strength grids on the dev split, chosen settings reported on test (`.sweep`).
- ``report``: rebuild the tables from ``responses.jsonl``.

Method specs (``guide:delta=2``, ``gate+spotlight:target=0.2``…) are in `.specs`.
"""
