"""One figure style for the series, and the few plots more than one notebook draws."""
from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns
import torch

PALETTE = sns.color_palette("colorblind")


def set_style() -> None:
    """The series' look: seaborn whitegrid, colour-blind palette, readable sizes, crisp inline PNGs."""
    sns.set_theme(style="whitegrid", palette=PALETTE, context="notebook")
    plt.rcParams.update({"figure.figsize": (7, 4), "figure.dpi": 90, "axes.titlesize": 12,
                         "axes.titleweight": "bold", "legend.frameon": False})


def stacked_bars(breakdowns: dict[str, dict[str, float]], parts: list[str], unit: float = 1e9,
                 unit_name: str = "GB", title: str = "", ax=None, thin: float = 0.02):
    """One stacked bar per label: breakdowns[label][part] in bytes, drawn in `unit_name`.

    Each bar's total is written above it; parts thinner than `thin` x the tallest bar (invisible as a
    sliver) are written out under the total, so a reader sees them. The legend sits outside the axes.
    """
    ax = ax or plt.subplots()[1]
    labels = list(breakdowns)
    bottom = [0.0] * len(labels)
    for colour, part in zip(PALETTE, parts):
        heights = [breakdowns[label][part] / unit for label in labels]
        ax.bar(labels, heights, bottom=bottom, label=part, color=colour)
        bottom = [b + h for b, h in zip(bottom, heights)]
    top = max(bottom) if bottom and max(bottom) > 0 else 1.0
    for i, (label, total) in enumerate(zip(labels, bottom)):
        slivers = [f"{part} {breakdowns[label][part] / unit:,.2f} {unit_name}" for part in parts
                   if 0 < breakdowns[label][part] / unit < thin * top]
        if slivers:
            ax.annotate("\n".join(slivers), (i, total), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8)
        ax.annotate(f"{total:,.1f} {unit_name}", (i, total), xytext=(0, 3 + 11 * len(slivers)),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9, fontweight="bold")
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel(f"memory ({unit_name})")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


@torch.no_grad()
def decision_boundary(model, X: torch.Tensor, y: torch.Tensor, ax=None, title: str = "", steps: int = 200):
    """Shade the predicted class of a 2-D binary classifier over the data's range; scatter the data."""
    ax = ax or plt.subplots()[1]
    lo, hi = X.min(0).values - 0.5, X.max(0).values + 0.5
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], steps), torch.linspace(lo[1], hi[1], steps), indexing="xy")
    was_training = model.training
    try:
        model.eval()
        prob = model(torch.stack([gx.ravel(), gy.ravel()], 1)).softmax(-1)[:, 1].reshape(gx.shape)
    finally:
        model.train(was_training)
    ax.contourf(gx, gy, prob, levels=[0, 0.5, 1], colors=[PALETTE[0], PALETTE[1]], alpha=0.25)
    ax.scatter(X[:, 0], X[:, 1], c=[PALETTE[int(c)] for c in y], s=6)
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    return ax


def show_interactive(function, note: str = "interactive: run the notebook to use it", **controls):
    """Display `ipywidgets.interactive(function, **controls)` with a short plain-text stand-in.

    A saved notebook keeps a widget's text/plain next to its view; without a kernel (GitHub, nbviewer)
    that text is all a reader sees, so it says what to do instead of dumping the widget's repr.
    Returns the interactive widget.
    """
    import ipywidgets
    from IPython.display import display

    widget = ipywidgets.interactive(function, **controls)
    display({"text/plain": note,
             "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                          "model_id": widget.model_id}}, raw=True)
    return widget
