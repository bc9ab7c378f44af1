"""What training shows: a loss history grouped by kind, plots, and a stability monitor.

:class:`LossHistory` averages the per-step loss dict over ``log_every`` steps and appends one
JSON line per window to ``out_dir/losses.jsonl`` (components grouped by kind:
reconstruction, quantizer, regulariser, kl, adversarial; the total; gradient norm; moving
weights; codes used per head). At the end of training it draws ``plots/losses.png`` (one
panel per kind) and ``plots/code_usage.png`` (codes used per head over time, and each
head's final rank–usage curve). TensorBoard gets the same scalars where it is installed.
Each validation is one line of ``out_dir/history.jsonl``; ``plots/validation.png`` shows held-out
recall over the steps, with the step of the best checkpoint (highest recall 10@10) starred.

:class:`StabilityMonitor` looks at every step's loss and gradient norm: NaN/Inf, norms far
above their recent median (exploding) or near zero (vanishing). It answers ``ok``, ``skip``
or raises :class:`TrainingDiverged` as configured, and logs a warning for each event.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import MonitorConfig
from vqvae.health import count_codes

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The stability monitor stopped the run; the message says what it saw and what to change."""


class LossHistory:
    """Rolling per-step losses → one grouped JSON line per window, kept in memory for the plots."""

    def __init__(self, cfg: MonitorConfig, out_dir: Path, kinds: dict[str, str], enabled: bool = True) -> None:
        self.cfg, self.kinds, self.enabled = cfg, kinds, enabled
        self.path = Path(out_dir) / "losses.jsonl"
        self.plot_dir = Path(out_dir) / "plots"
        self.window: dict[str, list[float]] = defaultdict(list)
        self.usage: np.ndarray | None = None  # hard code counts [H, K] in the current window
        self.total_usage: np.ndarray | None = None
        self.rows: list[dict[str, Any]] = []
        self.val_path = Path(out_dir) / "history.jsonl"
        self.val_rows: list[dict[str, Any]] = []  # {"step", "val": held-out metrics}
        self.tb = _tensorboard(Path(out_dir) / "tensorboard") if (enabled and cfg.tensorboard) else None

    def record(self, step: int, values: dict[str, float], codes: np.ndarray | None = None,
               codebook_size: int = 256) -> dict[str, Any] | None:
        """Add one step; returns the row written when this step closes a window."""
        for k, v in values.items():
            self.window[k].append(v)
        if codes is not None:
            counts = count_codes(codes, codebook_size)
            self.usage = counts if self.usage is None else self.usage + counts
            self.total_usage = counts if self.total_usage is None else self.total_usage + counts
        if (step + 1) % self.cfg.log_every:
            return None
        return self.flush(step + 1)

    def flush(self, step: int) -> dict[str, Any] | None:
        if not self.window:
            return None
        means = {k: _finite_mean(v) for k, v in self.window.items()}
        row: dict[str, Any] = {"step": step, "losses": {}, "total": means.pop("total", None)}
        for name, value in means.items():
            group = self.kinds.get(name)
            if group:
                row["losses"].setdefault(group, {})[name] = value
            else:
                row.setdefault("stats", {})[name] = value
        if self.usage is not None:
            row["codes_used"] = [int((h > 0).sum()) for h in self.usage]
        self.window.clear()
        self.usage = None
        self.rows.append(row)
        if self.enabled:
            self._write(row)
        return row

    def _write(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for group, terms in row["losses"].items():
                for name, value in terms.items():
                    self.tb.add_scalar(f"{group}/{name}", value, row["step"])
            for name, value in {"total": row["total"], **row.get("stats", {})}.items():
                if value is not None:
                    self.tb.add_scalar(f"train/{name}", value, row["step"])

    def record_validation(self, step: int, metrics: dict[str, Any]) -> None:
        """One validation: a line of ``history.jsonl``, kept for the validation plot."""
        row = {"step": step, "val": metrics}
        self.val_rows.append(row)
        if self.enabled:
            self.val_path.parent.mkdir(parents=True, exist_ok=True)
            with self.val_path.open("a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")

    def reload(self, up_to_step: int) -> None:
        """On resume: keep the rows already written up to the restored step (for the final plots)
        and drop any written after it by the interrupted run (losses and validations alike)."""
        self.rows = self._keep_until(self.path, up_to_step)
        self.val_rows = self._keep_until(self.val_path, up_to_step)

    def _keep_until(self, path: Path, up_to_step: int) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["step"] <= up_to_step]
        if self.enabled and len(kept) != len(rows):
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def plot(self) -> list[Path]:
        """Write the PNGs (rank 0, ``plots`` on); returns their paths."""
        if not (self.enabled and self.cfg.plots and (self.rows or self.val_rows)):
            return []
        try:
            from trainer.plots import plot_code_usage, plot_losses, plot_validation
        except ImportError:  # matplotlib is the optional `plots` extra
            log.warning("no training plots: matplotlib is not installed (pip install 'monolith[plots]')")
            return []

        self.plot_dir.mkdir(parents=True, exist_ok=True)
        paths = [plot_losses(self.rows, self.plot_dir / "losses.png")] if self.rows else []
        if self.total_usage is not None and self.rows:
            paths.append(plot_code_usage(self.rows, self.total_usage, self.plot_dir / "code_usage.png"))
        if self.val_rows:
            paths.append(plot_validation(self.val_rows, self.plot_dir / "validation.png"))
        return paths


def _finite_mean(values: list[float]) -> float | None:
    good = [v for v in values if math.isfinite(v)]
    return float(sum(good) / len(good)) if good else None


def _tensorboard(path: Path) -> Any:
    """A SummaryWriter where tensorboard is installed, else None (it is not a dependency)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: logging to losses.jsonl only")
        return None
    return SummaryWriter(str(path))


class StabilityMonitor:
    """Per-step verdict on loss and gradient norm: "ok", "skip", or TrainingDiverged."""

    def __init__(self, cfg: MonitorConfig, warn: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.norms: deque[float] = deque(maxlen=cfg.window)
        self.skips = 0  # consecutive
        self.skipped_total = 0
        self.events: list[dict[str, Any]] = []
        self.last_vanish = -(10**9)
        self._warn = warn

    def warn(self, message: str) -> None:
        log.warning(message)
        if self._warn is not None:
            self._warn(message)

    def check(self, step: int, loss: float, grad_norm: float) -> str:
        """Judge one step before the optimiser applies it."""
        c = self.cfg
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}"
            return self._act(step, "nonfinite", what, c.on_nonfinite,
                             "lower optim.lr, raise optim.warmup_steps, or check the data for NaN/Inf")
        verdict = "ok"
        if len(self.norms) >= min(10, c.window) and grad_norm > c.explode_factor * statistics.median(self.norms):
            what = (f"exploding gradient at step {step}: norm {grad_norm:.3g} is over {c.explode_factor:g}× "
                    f"the recent median {statistics.median(self.norms):.3g}")
            verdict = self._act(step, "explode", what, c.on_explode, "lower optim.lr or optim.grad_clip")
        elif grad_norm < c.vanish_below and step - self.last_vanish >= c.window:  # once per window
            self.last_vanish = step
            self._event(step, "vanish", f"vanishing gradient at step {step}: norm {grad_norm:.3g} "
                                        f"< {c.vanish_below:g}; the model has stopped learning")
        if verdict == "ok":
            self.norms.append(grad_norm)
            self.skips = 0
        return verdict

    def _act(self, step: int, kind: str, what: str, action: str, advice: str) -> str:
        if action == "stop":
            raise TrainingDiverged(f"{what}; training stopped (monitor.on_{kind}=stop). Try: {advice}.")
        self._event(step, kind, what + ("; step skipped" if action == "skip" else ""))
        if action == "warn":
            return "ok"
        self.skips += 1
        self.skipped_total += 1
        if self.skips >= self.cfg.max_skips:
            raise TrainingDiverged(f"{self.skips} consecutive steps skipped, the last for {what}; training "
                                   f"stopped (monitor.max_skips={self.cfg.max_skips}). Try: {advice}.")
        return "skip"

    def _event(self, step: int, kind: str, message: str) -> None:
        self.events.append({"step": step, "kind": kind, "message": message})
        self.warn(message)
