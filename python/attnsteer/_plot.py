"""Matplotlib helpers shared by the plotting methods (matplotlib is imported only when plotting)."""

from __future__ import annotations

from typing import Optional


def pyplot(path: Optional[str]):
    """``matplotlib.pyplot``, on the file-only Agg backend when the figure goes to ``path``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(fig, path: Optional[str], *, tight: bool = True):
    """Lay out, save to ``path`` (and close) when given; return the figure for notebooks."""
    if tight:
        fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return fig
