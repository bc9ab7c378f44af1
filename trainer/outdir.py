"""An ``out_dir`` holds one run: a new run there must say whether it continues or replaces it.

Without this, ``monolith-train train`` into a folder with a finished run silently replaced its
``best.safetensors`` (with a worse one, possibly) and appended a second run's lines to its
``history.jsonl`` and ``losses.jsonl``, so neither the checkpoints nor the plots said which run
they came from.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

# What a run writes into its out_dir (trainer.loop, trainer.monitor).
RUN_FILES = ("best.safetensors", "last.safetensors", "last.state.safetensors", "history.jsonl", "losses.jsonl")
RUN_DIRS = ("plots", "tensorboard")


class RunExists(ValueError):
    """The out_dir holds a run, and neither ``--resume`` nor ``--overwrite`` was given."""


def run_files(out_dir: Path) -> list[str]:
    """The names of a previous run's files and folders in ``out_dir``."""
    out_dir = Path(out_dir)
    return [n for n in (*RUN_FILES, *RUN_DIRS) if (out_dir / n).exists()]


def claim(out_dir: Path, *, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Make ``out_dir`` ready for a run: refuse (``RunExists``) when it holds one that would be
    mixed with the new one; with ``overwrite``, remove that run's files first (on the main rank)."""
    if resume and overwrite:
        raise RunExists("--resume continues the run in out_dir and --overwrite deletes it: pass one of them")
    found = run_files(out_dir)
    if resume or not found:
        return
    if not overwrite:
        raise RunExists(
            f"{out_dir} already holds a training run ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to delete it and start again, or --out-dir for a new folder"
        )
    if main:
        log.warning("--overwrite: removing the previous run in %s (%s)", out_dir, ", ".join(found))
        for name in found:
            path = Path(out_dir) / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
