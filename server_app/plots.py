"""Pictures of a run: the partition (clients x classes) and accuracy against rounds.

Users look at a partition before they trust a number, so it is drawn from what the
clients reported. Plain matplotlib ``Figure`` objects (no pyplot): no display, no global
state, safe in a ServerApp thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server_app.metric_keys import ACCURACIES, VALIDATION

ACCURACY_CURVES = tuple((a.key, a.label) for a in (*ACCURACIES, VALIDATION))
MAX_TICK_LABELS = 40
MAX_ANNOTATED_CELLS = 400


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes (120 dpi, tight): every picture of the project is written so."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def partition_heatmap(
    counts: np.ndarray,
    partition_ids: Sequence[int],
    held_out: Sequence[bool],
    classes: Sequence[str],
    title: str,
) -> bytes:
    """PNG of the clients x classes count matrix; held-out clients are marked."""
    counts = np.asarray(counts)
    rows, cols = counts.shape
    figure = Figure(figsize=(min(4 + 0.25 * cols, 14), min(2 + 0.25 * rows, 12)))
    ax = figure.add_subplot()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=ax, label="training examples")
    ax.set_xlabel("class")
    ax.set_ylabel(
        "client (partition id; * held out)"
        if rows <= MAX_TICK_LABELS
        else "client (partition id; red mark: held out)"
    )
    ax.set_title(title)
    if cols <= MAX_TICK_LABELS:
        ax.set_xticks(range(cols), list(classes), rotation=90, fontsize=7)
    if rows <= MAX_TICK_LABELS:
        labels = [f"{p}{'*' if h else ''}" for p, h in zip(partition_ids, held_out, strict=True)]
        ax.set_yticks(range(rows), labels, fontsize=7)
    else:  # too many rows to label: a red mark left of each held-out client
        marked = [r for r, h in enumerate(held_out) if h]
        ax.scatter([-0.5] * len(marked), marked, marker=">", color="red", s=12, clip_on=False)
    if rows * cols <= MAX_ANNOTATED_CELLS:  # small enough to read every count
        bright = counts.max() / 2 if counts.size else 0
        for (r, c), n in np.ndenumerate(counts):
            if n:
                color = "black" if n > bright else "white"
                ax.text(c, r, str(int(n)), ha="center", va="center", fontsize=6, color=color)
    return png_bytes(figure)


def accuracy_plot(rows: Sequence[Mapping[str, object]], title: str) -> bytes:
    """PNG of every accuracy the run logged, against the server round."""
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    for key, label in ACCURACY_CURVES:
        points = [(row["round"], row[key]) for row in rows if isinstance(row.get(key), int | float)]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=8)
    return png_bytes(figure)
