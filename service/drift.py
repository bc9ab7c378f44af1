"""Drift of served traffic from the checkpoint's reference, watched as the traffic comes in.

``vqvae.drift.code_drift`` judges it; ``DriftWatch`` holds what the checkpoint stores to judge
against (reference counts, evaluation cosine), re-judges after every encode pass and on every
``GET /codebook/health`` or ``/metrics``, and says so when the status changes: a log warning the
moment it turns ``drifted`` (once per transition, not per check), an info line when it leaves
``drifted``, and the Prometheus metrics ``monolith_drift_status{status}`` (1 for the current
status) and ``monolith_drift_transitions_total{status}`` (changes, by the status entered).
Per server process, like the traffic counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from vqvae.drift import CodeDrift, DriftStatus, code_drift

log = logging.getLogger(__name__)


class BadReferenceCounts(ValueError):
    """The checkpoint's ``reference_counts`` are not non-negative counts of shape [heads, codes]."""


def stored_reference_counts(monolith: Any) -> np.ndarray | None:
    """The checkpoint's reference counts [H, K]; None where it stores none, ``BadReferenceCounts``
    where they are unusable."""
    cfg = monolith.config
    raw = monolith.metadata.get("reference_counts")
    if raw is None:
        return None
    try:
        counts = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        counts = np.zeros(0)
    if counts.shape != (cfg.num_heads, cfg.codebook_size) or (counts < 0).any():
        raise BadReferenceCounts(
            f"this checkpoint's reference_counts (shape {list(counts.shape)}) are not non-negative counts "
            f"of shape [{cfg.num_heads}, {cfg.codebook_size}]")
    return counts


def stored_reference_cosine(monolith: Any) -> float | None:
    """The checkpoint's evaluation cosine (``metrics.cosine``), or None where it stores no usable one."""
    metrics = monolith.metadata.get("metrics", {})
    cosine = metrics.get("cosine") if isinstance(metrics, dict) else None
    return float(cosine) if isinstance(cosine, int | float) and 0 < cosine <= 1 else None


Snapshot = Callable[[], tuple[np.ndarray, float, int]]


class DriftWatch:
    """Judges traffic against one checkpoint's reference and reports status changes."""

    def __init__(self, monolith: Any, metrics: Any | None = None, label: str = "traffic") -> None:
        self.label = label  # whose traffic, in log lines
        try:
            self.reference = stored_reference_counts(monolith)
        except BadReferenceCounts as exc:
            log.warning("%s; drift is judged without them", exc)
            self.reference = None
        self.reference_cosine = stored_reference_cosine(monolith)
        self.metrics = metrics
        self.lock = threading.Lock()
        self.status: DriftStatus | None = None
        if self.available:
            self.status = "insufficient_data"
            if metrics is not None:
                metrics.set_drift_status(self.status)

    @property
    def available(self) -> bool:
        """Whether the checkpoint stores anything to judge against (else drift is None)."""
        return self.reference is not None or self.reference_cosine is not None

    def check(self, snapshot: Snapshot) -> tuple[np.ndarray, CodeDrift | None]:
        """Take the traffic (counts, cosine sum, cosine rows) and judge it, under one lock, so
        that judgements happen in the order of the snapshots they are made from."""
        with self.lock:
            counts, cosine_sum, cosine_rows = snapshot()
            if not self.available:
                return counts, None
            drift = code_drift(counts, self.reference, cosine_sum=cosine_sum, cosine_vectors=cosine_rows,
                               reference_cosine=self.reference_cosine)
            self._record(drift)
            return counts, drift

    def _record(self, drift: CodeDrift) -> None:
        before, self.status = self.status, drift.status
        if self.metrics is not None:
            self.metrics.set_drift(drift)
        if before == drift.status:
            return
        if self.metrics is not None:
            self.metrics.drift_transitions.labels(drift.status).inc()
        if drift.status == "drifted":
            log.warning("%s drifted from the checkpoint's reference (%s → drifted): %s", self.label, before,
                        "; ".join(drift.reasons))
        elif before == "drifted":
            log.info("%s no longer drifted from the checkpoint's reference (now %s)", self.label, drift.status)


class CollectionDrift:
    """The traffic of one fitted collection, judged against its own model's reference (the codes and
    reconstruction cosine of the rows its fit held out): writes to a fitted collection are encoded
    by that model, not the server's, so they are counted here and not in the server's traffic."""

    def __init__(self, name: str, monolith: Any) -> None:
        self.watch = DriftWatch(monolith, label=f"collection {name!r}'s traffic")
        self.weights_sha256 = monolith.weights_sha256
        k = monolith.config.codebook_size
        self.counts = np.zeros((monolith.config.num_heads, k), dtype=np.int64)
        self.cosine_sum, self.cosine_rows = 0.0, 0
        self.lock = threading.Lock()

    def observe(self, counts: np.ndarray, cosines: np.ndarray) -> None:
        """Add one encode pass: its code counts and the sampled reconstruction cosines."""
        with self.lock:
            self.counts += counts
            self.cosine_sum += float(cosines.sum())
            self.cosine_rows += len(cosines)
        self.watch.check(self.snapshot)

    def snapshot(self) -> tuple[np.ndarray, float, int]:
        with self.lock:
            return self.counts.copy(), self.cosine_sum, self.cosine_rows

    def check(self) -> CodeDrift | None:
        return self.watch.check(self.snapshot)[1]
