"""The rank–frequency plot of code usage: one log–log panel per head with its Zipf line.

Each panel shows the codes sorted by how often they were assigned (rank 1 = most used), the
Zipf line log f = c − α log r whose slope ``vqvae.health`` already fitted (only its intercept
is derived here, to draw it), and the uniform-usage line a compressor aims for (every code
assigned total/K times). A traffic plot may also carry the reference counts, scaled to the
same total, so a drift from the checkpoint's own usage shows at a glance.

SVG is written by hand (a few hundred lines of text, no plotting stack), so the service image
needs no matplotlib. PNG needs matplotlib, the ``plots`` extra
(``pip install 'monolith[plots]'``); without it :class:`PlotsUnavailable` answers 501 and
says so. matplotlib's object API on the Agg canvas is used (no pyplot, no global figure
state), under a lock, so it is safe from a worker thread.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Literal
from xml.sax.saxutils import escape

import numpy as np

from service.errors import PlotsUnavailable
from vqvae.health import CodebookHealth

PlotFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
_lock = threading.Lock()  # matplotlib's font cache and text layout are not reentrant

# Colours (the dashboard's palette): observed, fit, uniform, reference.
OBSERVED, FIT, UNIFORM, REFERENCE = "#1f6fb4", "#c8372d", "#2e7d32", "#8a8a8a"


def rank_frequency_plot(counts: np.ndarray, health: CodebookHealth, fmt: PlotFormat, title: str,
                        reference: np.ndarray | None = None) -> bytes:
    """Render counts [H, K] as one panel per head: codes by rank (log) against count (log),
    the fitted Zipf line with α and R², the uniform-usage line and, if given, the reference
    counts [H, K] scaled to each head's total."""
    counts = np.asarray(counts, dtype=np.int64)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if fmt == "svg":
        return _svg(counts, health, title, ref).encode("utf-8")
    return _png(counts, health, title, ref)


def _panel_series(row: np.ndarray, ref_row: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Sorted positive counts, the uniform level total/K, and the reference scaled to total."""
    freq = np.sort(row)[::-1].astype(np.float64)
    total = float(freq.sum())
    freq = freq[freq > 0]
    scaled = None
    if ref_row is not None and ref_row.sum() > 0 and total > 0:
        scaled = np.sort(ref_row)[::-1] * (total / ref_row.sum())
        scaled = scaled[scaled > 0]
    return freq, total / row.size, scaled


def _fit_line(freq: np.ndarray, alpha: float) -> tuple[float, float]:
    """(log f at rank 1, log f at the last used rank) of the least-squares line with slope −α."""
    log_r = np.log(np.arange(1, freq.size + 1))
    intercept = float(np.log(freq).mean() + alpha * log_r.mean())
    return intercept, intercept - alpha * float(log_r[-1])


def _legend_fit(stats) -> str:
    if stats.zipf_alpha is None:
        return "no Zipf fit (fewer than 3 codes used)"
    return f"Zipf fit: α = {stats.zipf_alpha:.2f}, R² = {stats.zipf_r2:.2f}"


def _panel_title(stats) -> str:
    return (f"head {stats.head}: {stats.used}/{stats.used + stats.dead} codes used, "
            f"H = {stats.entropy_bits:.2f} bits")


# -- SVG ---------------------------------------------------------------------------------------

PANEL_W, PANEL_H = 470, 330
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 34, 46  # plot area margins inside a panel
TITLE_H = 30


def _decades(lo: float, hi: float) -> list[int]:
    return list(range(math.floor(lo), math.ceil(hi) + 1))


def _clip(seg: tuple[float, float, float, float],
          box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    """The part of segment (x1, y1, x2, y2) inside box (left, top, right, bottom), or None when
    none is (Liang–Barsky)."""
    x1, y1, x2, y2 = seg
    left, top, right, bottom = box
    dx, dy = x2 - x1, y2 - y1
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x1 - left), (dx, right - x1), (-dy, y1 - top), (dy, bottom - y1)):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return x1 + t0 * dx, y1 + t0 * dy, x1 + t1 * dx, y1 + t1 * dy


def _svg(counts: np.ndarray, health: CodebookHealth, title: str, ref: np.ndarray | None) -> str:
    heads, k = counts.shape
    ncols = min(heads, 2) or 1
    nrows = math.ceil(heads / ncols) if heads else 1
    width, height = ncols * PANEL_W, TITLE_H + nrows * PANEL_H
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for i, stats in enumerate(health.heads):
        x0, y0 = (i % ncols) * PANEL_W, TITLE_H + (i // ncols) * PANEL_H
        ref_row = None if ref is None or ref.shape != counts.shape else ref[i]
        out.append(_svg_panel(x0, y0, counts[i], stats, ref_row))
    out.append("</svg>")
    return "\n".join(out)


def _svg_panel(x0: float, y0: float, row: np.ndarray, stats, ref_row: np.ndarray | None) -> str:
    k = row.size
    px0, px1 = x0 + LEFT, x0 + PANEL_W - RIGHT
    py0, py1 = y0 + TOP, y0 + PANEL_H - BOTTOM  # top, bottom of the plot area
    parts = [f'<g class="head" data-head="{stats.head}">',
             f'<text x="{(px0 + px1) / 2:.1f}" y="{y0 + 18}" text-anchor="middle" font-size="12">'
             f"{escape(_panel_title(stats))}</text>",
             f'<rect x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}" fill="none" stroke="#444"/>',
             f'<text x="{(px0 + px1) / 2:.1f}" y="{py1 + 34}" text-anchor="middle">rank of code (most used = 1)</text>',
             f'<text transform="translate({x0 + 16},{(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
             "times assigned</text>"]
    freq, uniform, scaled = _panel_series(row, ref_row)
    if freq.size == 0:
        parts.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{(py0 + py1) / 2:.1f}" text-anchor="middle" '
                     f'font-size="13">no codes assigned yet</text></g>')
        return "\n".join(parts)
    # Axes: log10 rank in [0, log10 K]; log10 count over every series drawn, padded.
    values = [freq, np.array([uniform])] + ([scaled] if scaled is not None and scaled.size else [])
    lo = min(float(np.log10(v.min())) for v in values)
    hi = max(float(np.log10(v.max())) for v in values)
    lo, hi = lo - 0.1 * max(hi - lo, 0.5), hi + 0.1 * max(hi - lo, 0.5)
    xr = max(math.log10(k), 1e-9)

    def sx(rank: float) -> float:
        return px0 + (px1 - px0) * math.log10(rank) / xr

    def sy(count: float) -> float:
        return py1 - (py1 - py0) * (math.log10(count) - lo) / (hi - lo)

    for d in _decades(0, xr):
        if 10**d <= k:
            x = sx(10**d)
            parts.append(f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py1}" stroke="#ddd"/>'
                         f'<text x="{x:.1f}" y="{py1 + 15}" text-anchor="middle">{10**d:g}</text>')
    for d in _decades(lo, hi):
        if lo <= d <= hi:
            y = py1 - (py1 - py0) * (d - lo) / (hi - lo)
            parts.append(f'<line x1="{px0}" y1="{y:.1f}" x2="{px1}" y2="{y:.1f}" stroke="#ddd"/>'
                         f'<text x="{px0 - 5}" y="{y + 4:.1f}" text-anchor="end">{10.0**d:g}</text>')
    if scaled is not None and scaled.size:
        pts = " ".join(f"{sx(r):.1f},{sy(v):.1f}" for r, v in enumerate(scaled, 1))
        parts.append(f'<polyline class="reference" points="{pts}" fill="none" stroke="{REFERENCE}" '
                     f'stroke-width="1.5"/>')
    y_u = sy(uniform)
    parts.append(f'<line class="uniform" x1="{sx(1):.1f}" y1="{y_u:.1f}" x2="{sx(k):.1f}" y2="{y_u:.1f}" '
                 f'stroke="{UNIFORM}" stroke-width="1.5" stroke-dasharray="6 4"/>')
    parts.append("".join(f'<circle cx="{sx(r):.1f}" cy="{sy(v):.1f}" r="2" fill="{OBSERVED}"/>'
                         for r, v in enumerate(freq, 1)))
    if stats.zipf_alpha is not None:
        # In log space: sy(exp(v)) would overflow for a steep fit far outside the panel.
        start, end = _fit_line(freq, stats.zipf_alpha)

        def ly(log_count: float) -> float:
            return py1 - (py1 - py0) * (log_count / math.log(10) - lo) / (hi - lo)

        # A fit steeper or flatter than the points leaves the axes' range: clip it to the panel.
        seg = _clip((sx(1), ly(start), sx(freq.size), ly(end)), (px0, py0, px1, py1))
        if seg is not None:
            parts.append(f'<line class="fit" x1="{seg[0]:.1f}" y1="{seg[1]:.1f}" x2="{seg[2]:.1f}" '
                         f'y2="{seg[3]:.1f}" stroke="{FIT}" stroke-width="2"/>')
    legend = [(OBSERVED, "observed"), (FIT, _legend_fit(stats)),
              (UNIFORM, f"uniform usage: {uniform:.3g} per code")]
    if scaled is not None and scaled.size:
        legend.append((REFERENCE, "reference, scaled to this total"))
    # Top right: a rank–frequency curve falls from top left to bottom right, leaving that corner.
    for j, (colour, label) in enumerate(legend):
        ly = py0 + 16 + 14 * j
        parts.append(f'<rect x="{px1 - 18}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{px1 - 23}" y="{ly + 1}" text-anchor="end">{escape(label)}</text>')
    parts.append("</g>")
    return "\n".join(parts)


# -- PNG (matplotlib, optional) ----------------------------------------------------------------


def _png(counts: np.ndarray, health: CodebookHealth, title: str, ref: np.ndarray | None) -> bytes:
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "PNG plots need matplotlib, which this installation leaves out: pip install 'monolith[plots]' "
            "(or use /codebook/health.svg, which needs nothing)") from None
    del matplotlib  # only its presence was checked; the Agg canvas is used directly
    with _lock:
        return _render_png(counts, health, title, ref)


def _render_png(counts: np.ndarray, health: CodebookHealth, title: str, ref: np.ndarray | None) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads, k = counts.shape
    ncols = min(heads, 2) or 1
    nrows = math.ceil(heads / ncols) if heads else 1
    # Fixed margins instead of constrained layout: the same picture at half the render time.
    fig = Figure(figsize=(5.4 * ncols, 4.0 * nrows))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.09, top=0.9, wspace=0.22, hspace=0.42)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.suptitle(title)
    for i, (ax, row, stats) in enumerate(zip(axes, counts, health.heads, strict=False)):
        ax.set_title(_panel_title(stats))
        ax.set_xlabel("rank of code (most used = 1)")
        ax.set_ylabel("times assigned")
        freq, uniform, scaled = _panel_series(row, None if ref is None or ref.shape != counts.shape else ref[i])
        if freq.size == 0:
            ax.text(0.5, 0.5, "no codes assigned yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ranks = np.arange(1, freq.size + 1)
        if scaled is not None and scaled.size:
            ax.loglog(np.arange(1, scaled.size + 1), scaled, color=REFERENCE, label="reference, scaled to this total")
        ax.loglog(ranks, freq, marker="o", markersize=3, linestyle="none", color=OBSERVED, label="observed")
        if stats.zipf_alpha is not None:
            start, _ = _fit_line(freq, stats.zipf_alpha)
            ax.loglog(ranks, np.exp(start - stats.zipf_alpha * np.log(ranks)), color=FIT, label=_legend_fit(stats))
        else:
            ax.plot([], [], " ", label=_legend_fit(stats))
        ax.axhline(uniform, color=UNIFORM, linestyle="--", label=f"uniform usage: {uniform:.3g} per code")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    for ax in axes[heads:]:
        ax.set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
