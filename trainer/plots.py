"""PNG plots of a training run: loss curves per kind, validation recall, and code usage per head.

Matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

GROUPS = ("reconstruction", "quantizer", "regulariser", "kl", "adversarial")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_losses(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per kind present (every term a line) plus one for the total and gradient norm."""
    groups = [g for g in GROUPS if any(g in r["losses"] for r in rows)]
    fig = Figure(figsize=(5.0 * (len(groups) + 1), 3.6))
    axes = fig.subplots(1, len(groups) + 1, squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=False):
        names = sorted({n for r in rows for n in r["losses"].get(group, {})})
        for name in names:
            pts = [(r["step"], r["losses"][group][name]) for r in rows
                   if r["losses"].get(group, {}).get(name) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
        ax.set_title(group)
        ax.set_xlabel("step")
        _maybe_log(ax, [v for r in rows for v in r["losses"].get(group, {}).values() if v is not None])
        ax.legend(fontsize=7)
    ax = axes[-1]
    pts = [(r["step"], r["total"]) for r in rows if r.get("total") is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), label="total", color="black")
    norms = [(r["step"], r["stats"]["grad_norm"]) for r in rows if r.get("stats", {}).get("grad_norm") is not None]
    if norms:
        twin = ax.twinx()
        twin.plot(*zip(*norms, strict=True), label="grad norm", color="tab:red", alpha=0.6)
        twin.set_ylabel("gradient norm (before clipping)")
        twin.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("total loss")
    ax.set_xlabel("step")
    return _save(fig, path)


def _maybe_log(ax: Any, values: list[float]) -> None:
    """Log scale when every value is positive and they span more than two decades."""
    pos = [v for v in values if v > 0]
    if pos and len(pos) == len(values) and max(pos) / min(pos) > 100:
        ax.set_yscale("log")


VALIDATION_RECALLS = ("recall_10@10", "recall_1@10", "recall_10@100")


def plot_validation(rows: list[dict[str, Any]], path: Path, selects: str = "recall_10@10") -> Path:
    """Held-out recall over the steps (rows ``{"step", "val": metrics}``), the step whose
    ``selects`` metric picked the best checkpoint starred."""
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    for name in VALIDATION_RECALLS:
        pts = [(r["step"], r["val"][name]) for r in rows if r["val"].get(name) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=name.replace("recall_", "recall "))
    scored = [(r["step"], r["val"][selects]) for r in rows if r["val"].get(selects) is not None]
    if scored:
        best_step, best = max(scored, key=lambda sv: sv[1])  # the first of equal scores, as training keeps it
        ax.plot([best_step], [best], marker="*", color="red", markersize=14, linestyle="none",
                label=f"best checkpoint: step {best_step}, {selects.replace('recall_', 'recall ')} {best:.3f}")
    ax.set(title="validation (held-out) recall", xlabel="step", ylabel="recall")
    ax.legend(loc="best", fontsize=7)
    return _save(fig, path)


def plot_code_usage(rows: list[dict[str, Any]], counts: np.ndarray, path: Path) -> Path:
    """Left: codes used per head in each logging window. Right: each head's usage by rank (log–log)."""
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    used = [(r["step"], r["codes_used"]) for r in rows if "codes_used" in r]
    for h in range(counts.shape[0]):
        if used:
            left.plot([s for s, _ in used], [u[h] for _, u in used], label=f"head {h}")
        ranked = np.sort(counts[h])[::-1]
        ranked = ranked[ranked > 0]
        right.loglog(np.arange(1, len(ranked) + 1), ranked / max(1, counts[h].sum()), label=f"head {h}")
    left.axhline(counts.shape[1], color="grey", linestyle=":", label=f"K = {counts.shape[1]}")
    left.set(title="codes used per head (per logging window)", xlabel="step", ylabel="codes used")
    right.set(title="usage by rank over training", xlabel="rank", ylabel="share of assignments")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return _save(fig, path)


def plot_landscape(coeffs: np.ndarray, losses: np.ndarray, path: Path, title: str) -> Path:
    """Filled contours of the loss over (α, β), contour lines on top, the trained weights at (0, 0)."""
    fig = Figure(figsize=(6.2, 5.2))
    ax = fig.subplots()
    a, b = np.meshgrid(coeffs, coeffs)
    filled = ax.contourf(a, b, losses, levels=30, cmap="viridis")
    lines = ax.contour(a, b, losses, levels=10, colors="white", linewidths=0.6)
    ax.clabel(lines, fontsize=6, fmt="%.3g")
    fig.colorbar(filled, ax=ax, label="training loss")
    ax.plot([0], [0], marker="*", color="red", markersize=12, label="trained weights")
    ax.set(xlabel="α (direction 1, filter-normalised)", ylabel="β (direction 2, filter-normalised)",
           title=f"loss landscape: {title}")
    ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def plot_sharpness(rows: list[dict[str, float]], center: float, path: Path, title: str) -> Path:
    """Largest loss increase found within each relative radius ε: random search and after ascent."""
    fig = Figure(figsize=(6.2, 4.2))
    ax = fig.subplots()
    radii = [r["radius"] for r in rows]
    ax.plot(radii, [max(r["random"], 1e-12) for r in rows], marker="o", label="best random perturbation")
    ax.plot(radii, [max(r["ascent"], 1e-12) for r in rows], marker="s", label="after projected ascent")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="relative radius ε (‖δ_f‖ ≤ ε‖w_f‖ per filter)", ylabel="loss increase",
           title=f"sharpness: {title}\nloss at the weights {center:.4g}")
    ax.legend(fontsize=7)
    return _save(fig, path)
