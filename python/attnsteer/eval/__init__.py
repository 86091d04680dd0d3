"""Does steering help? IFEval, long-context rule retention, fluency and strength sweeps.

Command line (``attnsteer eval …``; every run is resumable, results land in ``--out``):

- ``ifeval``: the 541 IFEval prompts (or the fixed ``--split dev|test``) through a model with
  each ``--method`` spec, scored with lm-eval's checkers (:mod:`.checkers`), highlighted by a
  ``--strategy`` (:mod:`.ifeval`), with fluency figures (:mod:`.fluency`).
- ``retention``: a checkable rule before/after a long document (:mod:`.retention`).
- ``sweep``: strength grids on the dev split, chosen settings reported on test (:mod:`.sweep`).
- ``report``: rebuild the tables from ``responses.jsonl``.

Method specs (``guide:delta=2``, ``gate+spotlight:target=0.2``…) are in :mod:`.specs`.
"""
