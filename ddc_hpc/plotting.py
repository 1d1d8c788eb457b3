"""matplotlib for the tools that draw figures: imported on first use, with the file-only Agg backend."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on Agg: figures are written to files, so no display is needed (batch nodes have none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
