"""One plot style for every figure in the book."""

import matplotlib.pyplot as plt

# Colour-blind-safe (Okabe-Ito): one colour per condition, the same across chapters.
PALETTE = {"none": "#000000", "batch": "#0072B2", "layer": "#E69F00", "group": "#009E73",
           "renorm": "#CC79A7", "ghost": "#D55E00", "instance": "#56B4E9", "rms": "#F0E442"}

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (7.0, 3.6),
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "legend.frameon": False, "lines.linewidth": 1.6,
}


def use_style():
    """Apply the course's matplotlib style (call once per chapter)."""
    plt.rcParams.update(STYLE)


def figure(ncols=1, nrows=1, width=7.0, height=3.4, **kwargs):
    """``plt.subplots`` in the course style, sized for the book's text column."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True,
                        **kwargs)
