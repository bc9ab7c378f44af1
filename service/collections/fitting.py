"""Fitting a collection: its own model, fine-tuned on its kept vectors, switched in atomically.

The generic checkpoint loses to any quantizer fitted on a collection's own rows; a fit gives the
collection codes of its own (docs/collections.md, "Fitting a collection"). One job per
collection (``CollectionBusy`` while one runs, or a migration), in steps:

1. **Track** writes: two SQLite triggers note the id of every item inserted or changed from now
   on in a ``fit_dirty`` table (inside the file, so writes of other processes are seen too).
2. **Snapshot** the kept vectors (rows without one give their decoded codes) to a ``.npy``.
3. **Fit** in a child process (``trainer.fit_job``): lower priority, bounded threads, killed on
   cancel and with the server. It fine-tunes from the server's checkpoint, judges every method
   on a held-out split (generic, adapted, the current own model, faiss OPQ4,PQ4 and LSQ4x8 fitted
   on the same rows) and encodes every row with the adapted model.
4. **Apply** only if the adapted model beats the collection's current one on the held-out split:
   the model file is installed durably (``fitted``), then one transaction, with the collection's
   lock held, re-encodes the items the triggers noted with the new model, writes every new code,
   names the model in ``meta`` and drops the triggers. Searches answer from the old codes until it
   commits; a kill -9 before leaves the collection on its old model (the triggers and an unnamed
   model file are cleaned up at the next start), after it on the new one.

Requests encoded by the old model while the switch happened are refused by the collection
(``ModelChanged``) and encoded again by the routes, so none is stored or searched on old codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.collections import files, fitted, partitions, vectors
from service.collections.collection import Collection
from service.collections.errors import CannotFit, CollectionBusy, NoFit, StoreError
from service.collections.store import Store

log = logging.getLogger(__name__)

MIN_ROWS = 1_000  # trainer.fit.MIN_ROWS, measured (docs/training.md); repeated so the server need not import it
TRIGGERS = ("fit_dirty_insert", "fit_dirty_update")
READ_CHUNK = 8192
Status = Literal["running", "applied", "not_applied", "failed", "cancelled"]


@dataclass
class FitSettings:
    threads: int = 1
    nice: int = 10
    baselines: bool = True
    auto_at: int = 5000  # 0: never automatically
    auto_growth: float = 4.0
    python: str = sys.executable


@dataclass
class FitJob:
    """One fit of one collection, as ``GET /collections/{name}/fit`` shows it."""

    id: str
    collection: str
    trigger: Literal["request", "auto"]
    recipe: dict[str, Any]
    status: Status = "running"
    phase: str = "snapshot"
    progress: float = 0.0
    rows: int | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished: str | None = None
    seconds: float | None = None
    applied: bool | None = None
    reason: str | None = None
    report: dict[str, Any] | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _process: subprocess.Popen[str] | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def public(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "collection", "trigger", "recipe", "status", "phase", "progress",
                                               "rows", "created", "finished", "seconds", "applied", "reason",
                                               "report")}


class Cancelled(Exception):
    pass


# ---- write tracking (SQL in the collection's file) ----------------------------------------------


def start_tracking(conn: sqlite3.Connection) -> None:
    """From now on, note the id of every item inserted or whose codes or vector change."""
    with files.transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS fit_dirty (id TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute("DELETE FROM fit_dirty")
        conn.execute("CREATE TRIGGER IF NOT EXISTS fit_dirty_insert AFTER INSERT ON items "
                     "BEGIN INSERT OR IGNORE INTO fit_dirty (id) VALUES (NEW.id); END")
        conn.execute("CREATE TRIGGER IF NOT EXISTS fit_dirty_update AFTER UPDATE OF codes, vector, id ON items "
                     "BEGIN INSERT OR IGNORE INTO fit_dirty (id) VALUES (NEW.id); END")


def drop_tracking(conn: sqlite3.Connection) -> None:
    """Remove the triggers and their table (inside the caller's transaction)."""
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DROP TABLE IF EXISTS fit_dirty")


def tracking(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN (?, ?)",
                        TRIGGERS).fetchone()[0] > 0


# ---- the jobs ----------------------------------------------------------------------------------


class FitJobs:
    """The fits of one server: started, watched, cancelled; the last job of each collection is kept."""

    def __init__(self, store: Store, base: Path, settings: FitSettings | None = None) -> None:
        self.store = store
        self.base = Path(base)
        self.settings = settings or FitSettings()
        self._jobs: dict[str, FitJob] = {}
        self._lock = threading.Lock()

    # -- start-up --

    def clean_up(self) -> None:
        """After a crash: drop write tracking left in collection files, model files no collection
        names and snapshot folders (no fit runs yet when the server starts)."""
        for stale in self.store.root.glob(".*.fit-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for name in self.store.names():
            path = self.store.path(name)
            try:
                meta = files.read_meta(path)
                conn = files.connect(path, self.store.synchronous)
            except StoreError:
                continue
            try:
                if tracking(conn):
                    with files.transaction(conn):
                        drop_tracking(conn)
                    log.info("collection %s: dropped the write tracking of a fit that did not finish", name)
            except (sqlite3.Error, StoreError) as exc:
                log.warning("collection %s: could not clean up after an unfinished fit: %s", name, exc)
            finally:
                conn.close()
            fitted.prune(path, meta.get(fitted.META_KEY) or None)

    # -- jobs --

    def start(self, name: str, recipe: dict[str, Any] | None = None, trigger: Literal["request", "auto"] = "request",
              baselines: bool | None = None) -> FitJob:
        """Check that ``name`` can be fitted, claim it and start the job (in a thread)."""
        col = self.store.get(name)
        recipe = dict(recipe or {})
        recipe.setdefault("threads", self.settings.threads)
        self._check(col, recipe)
        self.store.claim(name, "fit")
        job = FitJob(id=uuid.uuid4().hex[:12], collection=name, trigger=trigger, recipe=recipe, rows=len(col))
        use_baselines = self.settings.baselines if baselines is None else baselines
        job._thread = threading.Thread(target=self._run, args=(job, use_baselines), name=f"monolith-fit-{name}",
                                       daemon=True)
        with self._lock:
            self._jobs[name] = job
        job._thread.start()
        log.info("collection %s: fit %s started (%s, %d items)", name, job.id, trigger, job.rows)
        return job

    def _check(self, col: Collection, recipe: dict[str, Any]) -> None:
        if col.vector_kind == "none":
            raise CannotFit(f"collection {col.name!r} keeps no vectors, and a fit learns from them: create it with "
                            '"vectors": "int8" (the default) or "float16" and upsert its items again')
        need = int(recipe.get("min_rows", MIN_ROWS))
        if len(col) < need:
            raise CannotFit(f"collection {col.name!r} has {len(col):,} items; a fit needs at least {need:,} "
                            "(below that its held-out check cannot tell a better model from noise). Add items, or "
                            "keep the generic codes")

    def get(self, name: str) -> FitJob:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise NoFit(f"no fit of collection {name!r} has run since the server started; start one with "
                        f"POST /collections/{name}/fit (its last applied fit is shown in GET /collections/{name})")
        return job

    def cancel(self, name: str) -> FitJob:
        job = self.get(name)
        if not job.running:
            raise NoFit(f"no fit of collection {name!r} is running (the last one {job.status.replace('_', ' ')})")
        job._cancel.set()
        with contextlib.suppress(OSError, AttributeError):
            job._process.kill()  # type: ignore[union-attr]
        if job._thread is not None:
            job._thread.join(timeout=30)
        return job

    def maybe_auto(self, col: Collection) -> FitJob | None:
        """Start a fit of ``col`` if it is due (docs/collections.md, "Automatic fits"): auto_fit on,
        vectors kept, none running, and at ``auto_at`` items the first time, then each time it has
        grown ``auto_growth``-fold since its last fit (applied or not)."""
        s = self.settings
        if s.auto_at <= 0 or col.vector_kind == "none" or col.meta.get("auto_fit", "true") != "true":
            return None
        last = int(col.meta.get("fit_attempt_rows", "0") or 0)
        n = len(col)
        if n < max(s.auto_at, MIN_ROWS) or (last and n < s.auto_growth * last):
            return None
        with self._lock:
            job = self._jobs.get(col.name)
            if job is not None and job.running:
                return None
        try:
            return self.start(col.name, trigger="auto")
        except (CollectionBusy, CannotFit) as exc:
            log.info("collection %s: automatic fit not started: %s", col.name, exc)
            return None

    def close(self) -> None:
        """Cancel every running fit (server shutdown)."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.running]
        for job in running:
            with contextlib.suppress(NoFit):
                self.cancel(job.collection)

    # -- one job, in its thread --

    def _run(self, job: FitJob, baselines: bool) -> None:
        t0 = time.perf_counter()
        name = job.collection
        path = self.store.path(name)
        work = self.store.root / f".{name}.fit-{job.id}"
        try:
            work.mkdir()
            col = self.store.get(name)
            with col.switching(reload=False) as conn:
                start_tracking(conn)
            ids, current = self._snapshot(col, work / "vectors.npy")
            job.rows = len(ids)
            report = self._fit(job, work, current, baselines)
            job.report = report
            self._decide(job, report)
            if job.applied:
                self._apply(job, col, ids, work, report)
            else:
                self._record_attempt(col, report, job)
            job.status = "applied" if job.applied else "not_applied"
        except Exception as exc:  # the job's answer: the collection is left as it was
            if isinstance(exc, Cancelled) or job._cancel.is_set():  # a kill shows as a failed child too
                job.status, job.reason = "cancelled", f"cancelled by DELETE /collections/{name}/fit"
            else:
                job.status, job.reason = "failed", str(exc) or type(exc).__name__
                log.warning("collection %s: fit %s failed: %s", name, job.id, job.reason)
        finally:
            self._untrack(name)
            shutil.rmtree(work, ignore_errors=True)
            if job.status != "applied":
                with contextlib.suppress(StoreError, OSError):
                    fitted.prune(path, files.read_meta(path).get(fitted.META_KEY) or None)
            job.seconds = round(time.perf_counter() - t0, 2)
            job.finished = datetime.now(UTC).isoformat(timespec="seconds")
            self.store.release(name)
            log.info("collection %s: fit %s %s in %.1fs%s", name, job.id, job.status.replace("_", " "),
                     job.seconds, f" ({job.reason})" if job.reason else "")

    def _snapshot(self, col: Collection, out: Path) -> tuple[list[str], str | None]:
        """The ids and kept vectors of every item (one read snapshot), the vectors written to ``out``;
        and the path of the collection's own model, if it has one (the fit must beat it)."""
        dim = col.model.input_dim
        conn = files.connect(col.path, self.store.synchronous, readonly=True)
        ids: list[str] = []
        parts: list[np.ndarray] = []
        try:
            with files.read_snapshot(conn):
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                cur = conn.execute("SELECT id, vector, codes FROM items ORDER BY slot")
                while rows := cur.fetchmany(READ_CHUNK):
                    ids += [r[0] for r in rows]
                    parts.append(_vectors_of(col, meta, rows, dim))
        finally:
            conn.close()
        np.save(out, np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32))
        own = meta.get(fitted.META_KEY)
        return ids, str(fitted.model_path(col.path, own)) if own else None

    def _fit(self, job: FitJob, work: Path, current: str | None, baselines: bool) -> dict[str, Any]:
        """Run the child process and follow its progress; its report, or an exception with its reason."""
        spec = {"base": str(self.base), "vectors": str(work / "vectors.npy"), "out": str(work), "recipe": job.recipe,
                "current": current, "nice": self.settings.nice,
                "baselines": ["OPQ4,PQ4", "LSQ4x8"] if baselines else []}
        (work / "spec.json").write_text(json.dumps(spec))
        if job._cancel.is_set():
            raise Cancelled
        with open(work / "stderr.log", "w") as err:
            proc = subprocess.Popen([self.settings.python, "-m", "trainer.fit_job", str(work / "spec.json")],
                                    stdout=subprocess.PIPE, stderr=err, text=True, cwd=str(Path.cwd()))
            job._process = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    step = json.loads(line)
                    job.phase, job.progress = str(step["phase"]), float(step["progress"])
            rc = proc.wait()
        if job._cancel.is_set():
            raise Cancelled
        if rc != 0:
            error = work / "error.json"
            if error.is_file():
                raise RuntimeError(json.loads(error.read_text()).get("reason", "the fit failed"))
            tail = (work / "stderr.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the fit process ended with status {rc}: " + " | ".join(tail))
        return json.loads((work / "report.json").read_text())

    def _decide(self, job: FitJob, report: dict[str, Any]) -> None:
        adapted, current = report["adapted_recall"], report["current_recall"]
        against = "its current fitted model" if report.get("current") == "current" else "the generic checkpoint"
        if report.get("kept_generic"):
            job.applied, job.reason = False, ("no fitted state beat the generic checkpoint on the held-out rows; "
                                              "the collection keeps its codes")
        elif not adapted > current:
            job.applied, job.reason = False, (f"the fitted model ({adapted:.3f} recall 10@10 held out) does not beat "
                                              f"{against} ({current:.3f}); the collection keeps its codes")
        else:
            job.applied = True

    def _record_attempt(self, col: Collection, report: dict[str, Any], job: FitJob) -> None:
        """A fit not applied: its report is shown and auto-fit waits for growth before trying again;
        the report of the model in use is kept where one is."""
        rows = {"fit_attempt_rows": str(report["rows"])}
        if not col.meta.get(fitted.META_KEY):
            rows[fitted.REPORT_KEY] = json.dumps({**report, "applied": False, "reason": job.reason})
        col.set_meta(rows)

    def _apply(self, job: FitJob, col: Collection, ids: list[str], work: Path, report: dict[str, Any]) -> None:
        job.phase, job.progress = "switch", 0.0
        if job._cancel.is_set():
            raise Cancelled
        codes = np.load(work / "codes.npy")
        if len(codes) != len(ids):
            raise RuntimeError(f"the fit encoded {len(codes)} rows of {len(ids)}")
        sha = fitted.install(col.path, work / "model.safetensors")
        own = fitted.load(col.path, sha)
        with col.switching() as conn, files.transaction(conn):
            dirty = [r[0] for r in conn.execute("SELECT id FROM fit_dirty")] if tracking(conn) else None
            if dirty is None:
                raise RuntimeError("the write tracking of this fit went away (another fit or a restart); "
                                   "nothing was changed: fit again")
            drop_tracking(conn)
            fresh = self._encode_dirty(col, conn, dirty, own)
            skip = set(dirty)
            conn.executemany("UPDATE items SET codes = ? WHERE id = ?",
                             [(codes[i].tobytes(), item) for i, item in enumerate(ids) if item not in skip])
            conn.executemany("UPDATE items SET codes = ? WHERE id = ?", fresh)
            meta = {"weights_sha256": sha, fitted.META_KEY: sha, "fitted_rows": str(report["rows"]),
                    "fit_attempt_rows": str(report["rows"]),
                    fitted.REPORT_KEY: json.dumps({**report, "applied": True, "rewritten_after_fit": len(fresh)})}
            conn.execute(f"DELETE FROM meta WHERE key = '{partitions.META_CENTROIDS}'")
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
        col.train_if_due()  # an IVF collection's lists were codes of the old model: trained again
        fitted.prune(col.path, sha)
        job.progress = 1.0

    @staticmethod
    def _encode_dirty(col: Collection, conn: sqlite3.Connection, dirty: list[str], own: Any) -> list[tuple[bytes, str]]:
        """New codes for the items written during the fit, by the new model (inside the switch)."""
        out: list[tuple[bytes, str]] = []
        dim = col.model.input_dim
        for part in files.chunks(dirty):
            rows = conn.execute(f"SELECT id, vector, codes FROM items WHERE id IN ({','.join('?' * len(part))})",
                                list(part)).fetchall()
            if rows:
                x = _vectors_of(col, col.meta, rows, dim)
                out += [(c.tobytes(), r[0]) for c, r in zip(own.encode(x, progress=False), rows, strict=True)]
        return out

    def _untrack(self, name: str) -> None:
        with contextlib.suppress(StoreError, sqlite3.Error):
            col = self.store.get(name)
            with col.switching(reload=False) as conn:
                if tracking(conn):
                    with files.transaction(conn):
                        drop_tracking(conn)


def _vectors_of(col: Collection, meta: dict[str, str], rows: list[tuple[Any, ...]], dim: int) -> np.ndarray:
    """float32 [len(rows), dim] from (id, vector, codes) rows: the kept vectors, and for rows kept
    without one (imported from an older export) their codes decoded by the collection's model."""
    x = np.zeros((len(rows), dim), dtype=np.float32)
    have = [i for i, r in enumerate(rows) if r[1] is not None]
    if have:
        x[have] = vectors.unpack(meta.get(vectors.META_KEY, "none"), [rows[i][1] for i in have], dim)
    lack = [i for i, r in enumerate(rows) if r[1] is None]
    if lack and col.model.decoder is not None:
        codes = np.frombuffer(b"".join(rows[i][2] for i in lack), dtype=np.uint8).reshape(len(lack), -1)
        x[lack] = col.model.decoder(codes.astype(np.int64))
    return x
