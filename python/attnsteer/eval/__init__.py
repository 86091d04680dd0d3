"""Does steering help? IFEval, long-context rule retention, context priority, fluency and strength sweeps.

Command line (``attnsteer eval …``; every run is resumable, results land in ``--out``):

- ``ifeval``: the 541 IFEval prompts (or the fixed ``--split dev|test``) through a model with
  each ``--method`` spec, scored with lm-eval's checkers (`.checkers`), highlighted by a
  ``--strategy`` (`.ifeval`), with fluency figures (`.fluency`).
- ``retention``: a checkable rule before/after a long document (`.retention`).
- ``priority``: conflicting statements, one marked: does the reply follow the marked one (`.priority`)?
- ``sweep --task ifeval|retention|priority``: strength grids on a task's dev split, the chosen
  settings reported on its test split — one engine (`.sweep`) over the tasks' common shape (`.tasks`).
- ``report``: rebuild the tables from ``responses.jsonl``.

Method specs (``guide:delta=2``, ``gate+spotlight:target=0.2``…) are in `.specs`.
"""
