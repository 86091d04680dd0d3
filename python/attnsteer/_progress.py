"""Progress bars: tqdm's notebook widget where ipywidgets is installed, its plain text bar elsewhere.

``tqdm.auto`` alone warns "IProgress not found" on stderr the moment it is imported in a notebook
kernel without ipywidgets (and then draws text anyway), so it is only imported when the widget can
be drawn.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def tqdm(*args: Any, **kwargs: Any):
    """``tqdm(...)``, as ``tqdm.auto`` would give it, minus the warning."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
    return bar(*args, **kwargs)
