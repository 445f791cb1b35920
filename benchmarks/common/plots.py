"""PNG plots of ``python -m benchmarks.quality``: held-out score against round or cumulative MB.

Matplotlib runs on the Agg backend (files only, no display). Each figure has one panel per
headline score that the runs have (in-domain loss, in-domain accuracy, OOD loss) and one line
per benchmark row, averaged over seeds, with error bars of one sample sd over seeds where a
row ran more than one; the base model's round-0 score is a dashed line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PANELS: tuple[tuple[str, str], ...] = (
    ("id_loss", "in-domain loss (lower is better)"),
    ("id_acc", "in-domain accuracy (higher is better)"),
    ("ood_loss", "out-of-domain loss (lower is better)"),
)
X_LABELS: Mapping[str, str] = {"round": "round", "cum_mb": "cumulative MB per client (log)"}


MARKERS = "osD^v<>pXh*"


def _draw_panel(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None,
    x: str,
    key: str,
    name: str,
) -> None:
    """One score's curves (and the base model's level) on ``ax``."""
    from matplotlib.ticker import MaxNLocator

    for i, row in enumerate(rows):
        pts = [p for p in row["curve"] if p.get(key) is not None]
        if x == "cum_mb":
            pts = [p for p in pts if p["cum_mb"] > 0]  # round 0 sits at 0 MB: off a log axis
        if not pts:
            continue
        sds = [p.get(f"{key}_sd") for p in pts]
        ax.errorbar(
            [p[x] for p in pts],
            [p[key] for p in pts],
            yerr=[sd or 0.0 for sd in sds] if any(sd for sd in sds) else None,
            marker=MARKERS[i % len(MARKERS)],
            linewidth=1.2,
            markersize=4,
            capsize=2,
            label=row["label"],
        )
    ref = (base or {}).get(key) or {}
    if ref.get("mean") is not None:
        ax.axhline(ref["mean"], color="grey", linestyle="--", linewidth=1, label="base model")
    if x == "cum_mb":
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(X_LABELS[x])
    ax.set_title(name, fontsize=10)
    ax.grid(True, alpha=0.3)


def plot_group(
    rows: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None,
    x: str,
    path: Path,
    title: str,
) -> Path:
    """Draw every row's mean curve against ``x`` (``"round"`` or ``"cum_mb"``) into ``path``.

    Parameters
    ----------
    rows
        Aggregated benchmark rows, each with a ``curve``: points holding ``round``,
        ``cum_mb`` and the scores (None where a run has no such score).
    base
        The base model's row (its scores are drawn as dashed reference lines), or None.
    x
        The horizontal axis; ``"cum_mb"`` is drawn on a log scale without round 0 (0 MB).
    path
        Output PNG.
    title
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (k, name)
        for k, name in PANELS
        if any(p.get(k) is not None for r in rows for p in r["curve"])
    ]
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(max(7.0, 5.2 * n), 4.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels, strict=False):
        _draw_panel(ax, rows, base, x, key, name)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(2 + 2 * n, max(1, len(labels))),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.16, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
