"""One collection fit, as a child process of the server (``python -m trainer.fit_job SPEC.json``).

The server runs each fit in its own process (``service.collections.fitting``): at a lower CPU
priority and with bounded threads, so searches keep answering; killed outright on cancel; and
gone with the server (``PR_SET_PDEATHSIG``), so no orphan keeps training after a kill -9.

Reads the rows from ``vectors`` (float32 .npy), fits (``trainer.fit.fit``, the recipe given),
fits the faiss baselines on the same training rows, judges every method on the held-out rows
(the fair protocol: the generic checkpoint, the adapted model, the collection's current model
when it has its own, faiss OPQ4,PQ4 and LSQ4x8), then encodes every row with the adapted model.
Writes into ``out``: ``model.safetensors``, ``codes.npy`` (uint8 [N, H], the rows' order) and
``report.json``; on a failure ``error.json`` with the reason. Progress: one JSON line per step on
stdout, ``{"phase": ..., "progress": 0..1}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PR_SET_PDEATHSIG = 1
ENCODE_CHUNK = 4096


class FitJobSpec(BaseModel):
    """What the server asks of one fit."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="checkpoint to start from (the server's)")
    vectors: str = Field(description="float32 .npy of the collection's rows")
    out: str = Field(description="folder for model.safetensors, codes.npy, report.json")
    recipe: dict[str, Any] = Field(default_factory=dict, description="trainer.fit.FitRecipe fields")
    current: str | None = Field(None, description="the collection's own model, when it has one")
    baselines: list[str] = Field(default_factory=lambda: ["OPQ4,PQ4", "LSQ4x8"])
    nice: int = Field(10, ge=0, le=19)


def emit(phase: str, progress: float, **extra: Any) -> None:
    print(json.dumps({"phase": phase, "progress": round(float(progress), 4), **extra}), flush=True)


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the server's thread that started it goes."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def encode_all(model: Any, x: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(x), ENCODE_CHUNK):
        out.append(model.encode(x[start:start + ENCODE_CHUNK], progress=False))
        emit("encode", min(1.0, (start + ENCODE_CHUNK) / len(x)))
    return np.concatenate(out) if out else np.zeros((0, model.config.num_heads), dtype=np.uint8)


def summarise(rows: list[dict[str, Any]], seconds: dict[str, float]) -> list[dict[str, Any]]:
    """The fair report's rows, reduced to what a collection's info shows."""
    keep = ("method", "kind", "bytes_per_vector", "recall_10@10", "diff_recall_10@10", "diff_se_recall_10@10", "cosine")
    return [{**{k: r.get(k) for k in keep}, "fit_seconds": seconds.get(str(r.get("method")))} for r in rows]


def run(spec: FitJobSpec) -> dict[str, Any]:
    import torch

    from trainer.evaluate import baseline_method, fit_baselines, monolith_method, quality_report, split_queries
    from trainer.fit import FitRecipe, fit, save_fitted, split_rows
    from vqvae.api import Monolith

    recipe = FitRecipe.model_validate(spec.recipe)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
        with contextlib.suppress(ImportError):
            import faiss

            faiss.omp_set_num_threads(recipe.threads)
    x = np.load(spec.vectors)
    generic = Monolith.load(spec.base)
    emit("fit", 0.0, rows=len(x))
    adapted, report = fit(generic, x, recipe, progress=False, on_check=lambda f: emit("fit", f))
    tr, va = split_rows(len(x), recipe)
    emit("baselines", 0.0)
    fitted = fit_baselines(spec.baselines, np.ascontiguousarray(x[tr]), progress=False) if spec.baselines else []
    methods = [monolith_method("generic", generic), monolith_method("adapted", adapted)]
    if spec.current:
        methods.append(monolith_method("current", Monolith.load(spec.current)))
    methods += [baseline_method(b) for b in fitted]
    emit("report", 0.0)
    rows = quality_report(methods, [split_queries("held-out", x[va], min(1000, len(va) // 5), seed=recipe.seed)],
                          progress=False)
    by_method = {str(r["method"]): r for r in rows}
    out = Path(spec.out)
    save_fitted(adapted, out / "model.safetensors")
    codes = encode_all(Monolith.load(out / "model.safetensors"), x)  # as served: the file, reloaded
    np.save(out / "codes.npy", codes)
    seconds = {"adapted": report.fit_seconds, **{b.spec: b.fit_seconds for b in fitted}}
    current = by_method.get("current", by_method["generic"])
    return {
        "rows": report.rows, "train_rows": report.train_rows, "held_out_rows": report.held_out_rows,
        "held_out_queries": rows[0].get("n_queries"),
        "recipe": recipe.model_dump(mode="json"), "threads": report.threads,
        "fit_seconds": report.fit_seconds, "steps": report.steps, "best_step": report.best_step,
        "stopped": report.stopped, "kept_generic": report.kept_generic,
        "generic_recall": float(by_method["generic"]["recall_10@10"]),
        "adapted_recall": float(by_method["adapted"]["recall_10@10"]),
        "current_recall": float(current["recall_10@10"]),
        "current": "current" if "current" in by_method else "generic",
        "methods": summarise(rows, seconds),
        "base": Path(spec.base).name, "created": report.created,
    }


def main(argv: list[str]) -> int:
    die_with_parent()
    spec = FitJobSpec.model_validate_json(Path(argv[0]).read_text())
    os.nice(spec.nice)
    out = Path(spec.out)
    t0 = time.perf_counter()
    try:
        from trainer.fit import FitError, FitRejected

        result = run(spec)
    except FitRejected as exc:
        (out / "error.json").write_text(json.dumps({"kind": "rejected", "reason": exc.reason}))
        return 3
    except FitError as exc:
        (out / "error.json").write_text(json.dumps({"kind": "invalid", "reason": str(exc)}))
        return 2
    result["job_seconds"] = time.perf_counter() - t0
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, out / "report.json")
    emit("done", 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
