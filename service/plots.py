"""The rank–frequency plot of code usage: one log–log panel per head with its Zipf line.

Uses matplotlib's object API on the Agg canvas (no pyplot, no global figure state), so it
is safe to render from a worker thread. The statistics come from ``vqvae.health``; only
the intercept of the already-fitted line is derived here, to draw it.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Literal

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vqvae.health import CodebookHealth  # noqa: E402

PlotFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
_lock = threading.Lock()  # matplotlib's font cache and text layout are not reentrant


def rank_frequency_plot(counts: np.ndarray, health: CodebookHealth, fmt: PlotFormat, title: str) -> bytes:
    """Render counts [H, K] as one panel per head: codes by rank (log) against count (log),
    the fitted line log f = c − α log r, and a legend with α and R²."""
    # SVG text stays text (not glyph paths): smaller, searchable, readable by screen readers.
    with _lock, matplotlib.rc_context({"svg.fonttype": "none"}):
        return _render(counts, health, fmt, title)


def _render(counts: np.ndarray, health: CodebookHealth, fmt: PlotFormat, title: str) -> bytes:
    counts = np.asarray(counts, dtype=np.int64)
    heads = counts.shape[0]
    ncols = min(heads, 2)
    nrows = math.ceil(heads / ncols)
    # Fixed margins instead of constrained layout: the same picture at half the render time.
    fig = Figure(figsize=(5.4 * ncols, 4.0 * nrows))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.09, top=0.9, wspace=0.22, hspace=0.42)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.suptitle(title)
    for ax, row, stats in zip(axes, counts, health.heads, strict=False):
        freq = np.sort(row)[::-1]
        freq = freq[freq > 0]
        ax.set_title(
            f"head {stats.head}: {stats.used}/{stats.used + stats.dead} codes used, "
            f"H = {stats.entropy_bits:.2f} bits"
        )
        ax.set_xlabel("rank of code (most used = 1)")
        ax.set_ylabel("times assigned")
        if freq.size == 0:
            ax.text(0.5, 0.5, "no codes assigned yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ranks = np.arange(1, freq.size + 1)
        ax.loglog(ranks, freq, marker="o", markersize=3, linestyle="none", label="observed")
        if stats.zipf_alpha is not None:
            # Least-squares intercept of the line whose slope vqvae.health already fitted.
            intercept = float(np.log(freq).mean() + stats.zipf_alpha * np.log(ranks).mean())
            ax.loglog(
                ranks, np.exp(intercept - stats.zipf_alpha * np.log(ranks)), color="C3",
                label=f"Zipf fit: α = {stats.zipf_alpha:.2f}, R² = {stats.zipf_r2:.2f}",
            )
        else:
            ax.plot([], [], " ", label="no Zipf fit (fewer than 3 codes used)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    for ax in axes[heads:]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100)
    return buf.getvalue()
