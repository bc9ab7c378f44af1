""".npy bodies for bulk work: parsed without trusting the header, written with ``np.save``.

``np.load`` on an in-memory buffer allocates the array the header *claims* before it reads
a byte, so a 100-byte body claiming a terabyte would be a memory bomb. The header is read
first (it is a Python literal, parsed with ``ast.literal_eval`` by numpy, never unpickled)
and its dtype, shape and byte count are checked against the body actually received; only
then does ``np.load(..., allow_pickle=False)`` read the data.
"""

from __future__ import annotations

import io
import math

import numpy as np

from service.errors import InvalidInput, TooManyRows

NPY_MEDIA_TYPE = "application/x-npy"
MAX_HEADER_BYTES = 10_000


class NpyError(InvalidInput):
    """The body is not an acceptable .npy array; the message says what to fix."""


def is_npy(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == NPY_MEDIA_TYPE


def _read_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    fp = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError as exc:
        raise NpyError(f"body is not a .npy file ({exc}); write it with numpy.save") from exc
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpyError(f".npy format version {version} is not supported; use numpy.save (version 1.0)")
    except NpyError:
        raise
    except Exception as exc:  # numpy raises ValueError/SyntaxError/… for a corrupt header
        raise NpyError(f".npy header is malformed or truncated: {exc}") from exc
    return shape, fortran, dtype, fp.tell()


def load_npy(body: bytes, *, kind: str, max_rows: int | None = None) -> np.ndarray:
    """A 2-D array from a .npy body, checked before anything is allocated.

    ``kind`` is ``"float"`` (embeddings: float32 only) or ``"int"`` (codes: any integer dtype).
    Raises ``NpyError`` for a bad file and ``TooManyRows`` above ``max_rows``.
    """
    if not body:
        raise NpyError("body is empty; send a .npy file written with numpy.save")
    shape, _fortran, dtype, offset = _read_header(body)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise NpyError(f".npy dtype {dtype} is not allowed: send a plain numeric array (no objects or records)")
    if kind == "float" and dtype != np.float32:
        raise NpyError(f"embeddings .npy must be float32, got {dtype}; convert with x.astype(numpy.float32)")
    if kind == "int" and not np.issubdtype(dtype, np.integer):
        raise NpyError(f"codes .npy must have an integer dtype (uint8 preferred), got {dtype}")
    if len(shape) != 2:
        raise NpyError(f".npy array must be 2-D [N, columns], got shape {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize
    found = len(body) - offset
    if found != expected:
        raise NpyError(
            f".npy body is {'truncated' if found < expected else 'longer than its header says'}: "
            f"shape {list(shape)} of {dtype} needs {expected} data bytes, got {found}"
        )
    if max_rows is not None and shape[0] > max_rows:
        raise TooManyRows(shape[0], max_rows)
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False, max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:
        raise NpyError(f".npy body could not be read: {exc}") from exc
    return arr


def dump_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
