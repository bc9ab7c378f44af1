"""The caller's side of long transfers: progress reporting, export destinations, import sources.

tqdm is imported only when a progress bar is asked for, so the client needs it only then.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from .types import ProgressCallback

Source = str | os.PathLike[str] | bytes | IO[bytes]
Dest = str | os.PathLike[str] | IO[bytes]


class Bar:
    """``progress``: False (silent), True (a tqdm bar; ``pip install tqdm``) or a callback."""

    def __init__(self, progress: bool | ProgressCallback, total: int, desc: str) -> None:
        self._bar: Any = None
        self._callback: ProgressCallback | None = None
        self.total = total
        if callable(progress):
            self._callback = progress
        elif progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm (pip install tqdm); or pass a callback "
                                  "progress=lambda done, total: ...") from None
            self._bar = tqdm(total=total, unit="item", desc=desc)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        if self._callback is not None:
            self._callback(done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def source_bytes(src: Source) -> bytes:
    """An import file's bytes, from a path, bytes or a binary file."""
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    if isinstance(src, str | os.PathLike):
        return Path(src).read_bytes()
    return src.read()


class Sink:
    """Where an export goes: a path (written to a temp file, renamed when complete) or a file."""

    def __init__(self, dest: Dest) -> None:
        self.path = Path(dest) if isinstance(dest, str | os.PathLike) else None
        self.tmp = self.path.with_name(f".{self.path.name}.part") if self.path is not None else None
        self.fh: IO[bytes] = self.tmp.open("wb") if self.tmp is not None else dest  # type: ignore[assignment]
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.fh.write(chunk)
        self.size += len(chunk)

    def close(self, ok: bool) -> None:
        if self.tmp is None or self.path is None:
            return
        self.fh.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
