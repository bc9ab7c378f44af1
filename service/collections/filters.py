"""Metadata filters on search: parse a filter, and evaluate it to the rows it matches.

A filter is a JSON object (docs/collections.md, Filters); every entry of it must hold:

* ``{"key": value}`` — equality (``{"key": {"eq": value}}`` spelled short);
* ``{"key": {"op": value, ...}}`` with ``op`` one of :data:`OPERATORS`: ``eq``, ``ne``, ``in``
  (a list of values), ``gt``, ``gte``, ``lt``, ``lte`` (a number, or a string compared as text);
* ``{"$and": [filter, ...]}``, ``{"$or": [filter, ...]}`` (non-empty lists of filter objects)
  and ``{"$not": filter}`` (one filter object), nested at most :data:`MAX_DEPTH` deep, with at
  most :data:`MAX_CONDITIONS` conditions in all. Any other key starting with ``$`` is refused.

Keys are top-level metadata keys. Equality is JSON equality (``1`` equals ``1.0``; ``true`` is
not ``1``); a list value matches a condition when the list itself or any of its elements does
(``{"tags": "a"}`` matches ``"tags": ["a", "b"]``); ranges compare numbers with numbers and
strings with strings, never across types; an item without the key matches only ``ne``, which
is exactly "not ``eq``". ``$not`` is the complement: ``{"$not": {"k": 1}}`` matches every item
``{"k": 1}`` does not, items without ``k`` included (the same rows as ``{"k": {"ne": 1}}``).

Two mistakes that used to match nothing, silently, are refused (``InvalidFilter``, a 422) when
the filter is evaluated, since they depend on what the collection holds (:meth:`MetadataColumns.check`):

* a range whose bound is a string on a key that holds no strings (only numbers, say), or a
  number on a key that holds no numbers; a key holding both compares like with like;
* a condition that only items holding its key can meet (``eq``, ``in``, ranges; ``ne`` under an
  odd number of ``$not``) on a key that no item of a non-empty collection holds (a misspelt key);
  the message lists keys the items do hold. ``ne`` on such a key (or ``$not`` of ``eq``) matches
  every item, as before, so ``{"archived": {"ne": true}}`` works before the first item is archived.
  An empty collection matches nothing, without an error.

The filter is evaluated **before** the ADC scan: :meth:`MetadataColumns.mask` gives the rows
(slots) it matches and the search scores only those (``CodeIndex.search(rows=mask)``), so k
hits come back whenever k items match.
To make that cheap at a million items, each key that a filter has used is held in memory as a
dictionary-encoded column: an int32 per row naming the row's value in the key's vocabulary of
distinct values (-1: no such key). A condition is decided once per distinct value and then
spread over the rows with one vectorised look-up, so the cost is a pass over 4 bytes per row
per condition, whatever the values are; ``$and``, ``$or`` and ``$not`` combine the conditions'
masks (one more pass over 1 byte per row each). A column is built from SQLite (``json_extract``,
in C) the first time a filter names its key, and kept current on every upsert and delete; it is
dropped (and rebuilt on next use) when the collection reloads its index from the file.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.collections.errors import InvalidFilter

log = logging.getLogger(__name__)

OPERATORS: tuple[str, ...] = ("eq", "ne", "in", "gt", "gte", "lt", "lte")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
LOGICAL: tuple[str, ...] = ("$and", "$or", "$not")
MAX_CONDITIONS = 64  # conditions in the whole filter, however nested
MAX_DEPTH = 8  # $and / $or / $not inside one another
MAX_IN_VALUES = 10_000
FEW_VALUES = 16  # up to this many values are compared one by one rather than gathered
KEYS_SAMPLE = 10_000  # items whose keys a "no item has key" message reads
_VALID = ", ".join(OPERATORS)
_LOGICAL = ", ".join(LOGICAL)

Canon = Hashable  # a JSON value in hashable form (see ``canon``)


def canon(value: Any) -> Canon:
    """A JSON value as a hashable key whose equality is JSON's: numbers by value (1 == 1.0),
    booleans apart from numbers, lists element-wise, objects regardless of key order.

    Strings and numbers are their own keys (they never equal each other, and most distinct
    values are one of them, so no wrapper per value); the rest are tagged tuples, booleans
    included, since Python's ``True == 1``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ("z", None)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFilter("filter values must be finite numbers (JSON has no NaN or Infinity)")
        return value
    if isinstance(value, list | tuple):
        return ("l", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
    raise InvalidFilter(f"filter value {value!r} is not a JSON value")


@dataclass(frozen=True)
class Condition:
    key: str
    op: str
    value: Any  # canon(...) for eq/ne, a tuple of canon(...) for in, the raw number or string for ranges


@dataclass(frozen=True)
class Filter:
    """A parsed filter: its ``parts`` (conditions and nested filters) combined by ``op``:
    ``"and"`` (all hold; a filter object's entries, and ``$and``), ``"or"`` (one holds) or
    ``"not"`` (its single part does not hold)."""

    parts: tuple[Condition | Filter, ...]
    op: str = "and"

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """Every condition, however nested, in the order written."""
        return tuple(c for c, _ in self._leaves(False))

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys(c.key for c in self.conditions))

    @property
    def required_keys(self) -> list[str]:
        """Keys with a condition only an item holding the key can meet: ``eq``, ``in`` and
        ranges, or ``ne`` negated (an odd number of ``$not`` above it)."""
        return list(dict.fromkeys(c.key for c, negated in self._leaves(False) if (c.op == "ne") == negated))

    def _leaves(self, negated: bool) -> Iterator[tuple[Condition, bool]]:
        negated ^= self.op == "not"
        for part in self.parts:
            if isinstance(part, Filter):
                yield from part._leaves(negated)
            else:
                yield part, negated


def parse_filter(raw: Any) -> Filter | None:
    """A filter from its JSON form; None for no filter (``null`` or ``{}`` match everything).
    Raises ``InvalidFilter`` (422) naming the key and what to fix."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidFilter(
            f"filter must be a JSON object of metadata key → value or {{operator: value}}, got {type(raw).__name__}"
        )
    if not raw:
        return None
    return _parse_object(raw, "filter", 0, [0])


def _parse_object(raw: dict[str, Any], where: str, depth: int, count: list[int]) -> Filter:
    """One filter object (non-empty): its entries, all of which must hold. ``count``: the
    conditions parsed so far in the whole filter, in a list so nested calls share it."""
    parts: list[Condition | Filter] = []
    for key, spec in raw.items():
        if isinstance(key, str) and key.startswith("$"):
            parts.append(_logical(key, spec, where, depth, count))
            continue
        if not isinstance(spec, dict):
            conds = [Condition(key, "eq", canon(spec))]
        elif not spec:
            raise InvalidFilter(
                f"filter[{key!r}] is an empty object; give operators ({_VALID}), or {{\"eq\": {{}}}} "
                "to match an empty object"
            )
        else:
            conds = [_condition(key, op, value) for op, value in spec.items()]
        count[0] += len(conds)
        if count[0] > MAX_CONDITIONS:
            raise InvalidFilter(f"filter has more than {MAX_CONDITIONS} conditions")
        parts += conds
    return Filter(tuple(parts))


def _logical(key: str, spec: Any, where: str, depth: int, count: list[int]) -> Filter:
    """``$and`` / ``$or`` (a list of filter objects) or ``$not`` (one), at ``where``."""
    if key not in LOGICAL:
        raise InvalidFilter(
            f"unknown filter operator {key!r} in {where}; the operators combining filters are {_LOGICAL} "
            f"(keys starting with '$' are read as these, not as metadata keys); conditions on a key take {_VALID}"
        )
    here = f"{where}.{key}"
    if depth + 1 > MAX_DEPTH:
        raise InvalidFilter(f"filter nests {_LOGICAL} more than {MAX_DEPTH} deep (at {here}); flatten it")
    if key == "$not":
        if not isinstance(spec, dict) or not spec:
            got = "an empty object" if isinstance(spec, dict) else type(spec).__name__
            raise InvalidFilter(f"{here} needs one non-empty filter object (to negate several, "
                                f'{{"$not": {{"$or": [...]}}}}), got {got}')
        return Filter((_parse_object(spec, here, depth + 1, count),), "not")
    if not isinstance(spec, list) or not spec:
        got = "an empty list" if isinstance(spec, list) else type(spec).__name__
        raise InvalidFilter(f'{here} needs a non-empty list of filter objects, e.g. [{{"lang": "en"}}, '
                            f'{{"year": {{"gte": 2020}}}}], got {got}')
    if len(spec) > MAX_CONDITIONS:
        raise InvalidFilter(f"{here} has {len(spec)} filters, more than the {MAX_CONDITIONS} conditions "
                            "a filter may hold")
    parts: list[Condition | Filter] = []
    for i, sub in enumerate(spec):
        if not isinstance(sub, dict) or not sub:
            got = "an empty object (which matches every item)" if isinstance(sub, dict) else type(sub).__name__
            raise InvalidFilter(f"{here}[{i}] must be a filter object with at least one condition, got {got}")
        parts.append(_parse_object(sub, f"{here}[{i}]", depth + 1, count))
    return Filter(tuple(parts), "and" if key == "$and" else "or")


def _condition(key: str, op: str, value: Any) -> Condition:
    if op not in OPERATORS:
        raise InvalidFilter(f"unknown filter operator {op!r} for key {key!r}; valid operators: {_VALID}")
    if op == "in":
        if not isinstance(value, list):
            raise InvalidFilter(f"filter[{key!r}].in needs a list of values, got {type(value).__name__}")
        if len(value) > MAX_IN_VALUES:
            raise InvalidFilter(f"filter[{key!r}].in has {len(value)} values, more than {MAX_IN_VALUES}")
        return Condition(key, op, tuple(dict.fromkeys(canon(v) for v in value)))
    if op in RANGE_OPERATORS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidFilter(
                f"filter[{key!r}].{op} needs a number or a string, got {json.dumps(value)[:80]}"
            )
        canon(value)  # refuses NaN / Infinity
        return Condition(key, op, value)
    return Condition(key, op, canon(value))


# ---- columns --------------------------------------------------------------------------------


class _Column:
    """One key: int32 value id per row (-1: key absent) and the vocabulary of distinct values.

    The vocabulary only grows (a value no row holds any more stays, matching no row). What
    queries need about it (each value as a number, the strings, the elements of list values)
    is recorded as each value is added, so no query walks the vocabulary in Python.
    """

    def __init__(self, capacity: int) -> None:
        self.vids = np.full(max(capacity, 1), -1, dtype=np.int32)
        self.size = 0  # distinct values seen: value ids are 0..size-1
        self.ids: dict[Canon, int] = {}
        self._num = np.full(64, np.nan)  # value id → the value when it is a number, else NaN
        self._lists: dict[str, list[int]] = {"str_ids": [], "list_ids": [], "owners": [], "elems": []}
        self._strs: list[str] = []
        self._cache: dict[str, tuple[int, np.ndarray]] = {}
        # Per row, the value when it is a number (NaN otherwise): made by the first numeric range
        # on this key, so that a range over many distinct numbers (timestamps) is one compare
        # per row instead of a gather; then kept up to date. None until then.
        self.numbers: np.ndarray | None = None
        self.n_numbers = 0  # distinct numbers in the vocabulary (what a range's type check reads)
        self.held: tuple[int, bool] | None = None  # (write count, does some row hold the key)

    def vid(self, value: Canon) -> int:
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = self.size
            self.size += 1
            if isinstance(value, str):
                self._lists["str_ids"].append(found)
                self._strs.append(value)
            elif not isinstance(value, tuple):  # a number
                if found >= len(self._num):
                    grow = max(len(self._num), found + 1 - len(self._num))
                    self._num = np.concatenate([self._num, np.full(grow, np.nan)])
                self._num[found] = _as_float(value)
                self.n_numbers += 1
            elif value[0] == "l":  # its elements are values too, so "any element" is a vid look-up
                self._lists["list_ids"].append(found)
                for elem in value[1]:
                    self._lists["owners"].append(found)
                    self._lists["elems"].append(self.vid(elem))
        return found

    @property
    def num(self) -> np.ndarray:
        if len(self._num) < self.size:  # only non-numbers were added past its end
            self._num = np.concatenate([self._num, np.full(self.size - len(self._num), np.nan)])
        return self._num[: self.size]

    def array(self, name: str) -> np.ndarray:
        """``str_ids``, ``list_ids``, ``owners``, ``elems`` (int64) or ``strs`` as an array,
        converted again only after values were added."""
        items: list[Any] = self._strs if name == "strs" else self._lists[name]
        cached = self._cache.get(name)
        if cached is None or cached[0] != len(items):
            if name != "strs":
                arr = np.asarray(items, dtype=np.int64)
            else:  # fixed-width text while short; one long value must not widen every entry
                wide = max(map(len, items), default=0) > 64
                arr = np.asarray(items, dtype=object if wide else str)
            cached = self._cache[name] = (len(items), arr)
        return cached[1]

    @property
    def has_lists(self) -> bool:
        return bool(self._lists["list_ids"])

    @property
    def n_strings(self) -> int:
        return len(self._strs)

    def kinds(self) -> list[str]:
        """What kinds of JSON value the vocabulary holds (list elements included), for messages."""
        names = {"z": "nulls", "b": "booleans", "l": "lists", "o": "objects"}
        found = {"strings" if isinstance(v, str) else names[v[0]] if isinstance(v, tuple) else "numbers"
                 for v in self.ids}
        return sorted(found)

    def number_rows(self, n: int) -> np.ndarray:
        if self.numbers is None:
            self.numbers = np.full(len(self.vids), np.nan)
            self.numbers[:n] = np.append(self.num, np.nan)[self.vids[:n]]
        return self.numbers[:n]

    def set_rows(self, rows: Sequence[int], vids: Sequence[int]) -> None:
        self.vids[rows] = vids
        if self.numbers is not None:
            self.numbers[rows] = np.append(self.num, np.nan)[np.asarray(vids, dtype=np.int64)]

    def grow(self, capacity: int) -> None:
        if capacity > len(self.vids):
            size = max(capacity, int(len(self.vids) * 1.5) + 1024)
            grown = np.full(size, -1, dtype=np.int32)
            grown[: len(self.vids)] = self.vids
            self.vids = grown
            if self.numbers is not None:
                numbers = np.full(size, np.nan)
                numbers[: len(self.numbers)] = self.numbers
                self.numbers = numbers


def _as_float(v: int | float) -> float:
    """A JSON number as a float; integers beyond float range become ±inf (JSON has no limit)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _compare(values: np.ndarray, op: str, bound: Any) -> np.ndarray:
    if isinstance(bound, int) and not -(2**63) <= bound < 2**63:
        bound = _as_float(bound)  # numpy refuses Python integers beyond int64
    with np.errstate(invalid="ignore"):
        if op == "gt":
            return values > bound
        if op == "gte":
            return values >= bound
        if op == "lt":
            return values < bound
        return values <= bound


class MetadataColumns:
    """The in-memory columns of the keys filters have used, one row per index row.

    Not thread-safe; the owning ``Collection`` calls it under its lock, and applies every
    committed write to it the way it applies it to the CodeIndex.
    """

    def __init__(self) -> None:
        self._cols: dict[str, _Column] = {}
        self._n = 0
        self._writes = 0  # bumped by every change of rows, so cached per-column facts know they are stale

    def __len__(self) -> int:
        return self._n

    @property
    def keys(self) -> list[str]:
        return list(self._cols)

    @property
    def nbytes(self) -> int:
        """Bytes held for the rows' columns (capacity included; the vocabularies aside)."""
        return sum(c.vids.nbytes + (c.numbers.nbytes if c.numbers is not None else 0) for c in self._cols.values())

    def reset(self, n: int) -> None:
        """Forget every column (the index was rebuilt); columns are built again on next use."""
        self._cols.clear()
        self._n = n
        self._writes += 1

    # ---- building and maintenance ----------------------------------------------------------

    def ensure(self, keys: Sequence[str], conn: sqlite3.Connection) -> None:
        """Build the columns of ``keys`` not held yet, from the ``items`` table (slots 0..n-1)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._cols]
        if not missing:
            return
        t0 = time.perf_counter()
        cols = {k: _Column(self._n) for k in missing}
        simple = [k for k in missing if '"' not in k and "\\" not in k]
        try:
            if simple:
                _load_sql(conn, {k: cols[k] for k in simple})
        except sqlite3.OperationalError:  # SQLite before 3.38 has no ->
            simple = []
        others = [k for k in missing if k not in simple]
        if others:
            _load_python(conn, {k: cols[k] for k in others})
        self._cols.update(cols)
        log.info("filter columns %s built over %d items in %.2fs (%d distinct values)", missing, self._n,
                 time.perf_counter() - t0, sum(c.size for c in cols.values()))

    def _set(self, rows: Sequence[int], metas: Sequence[str | dict[str, Any] | None]) -> None:
        parsed = [json.loads(m) if isinstance(m, str) else m for m in metas]
        for key, col in self._cols.items():
            col.set_rows(rows, [-1 if not meta or key not in meta else col.vid(canon(meta[key])) for meta in parsed])

    def add(self, metas: Sequence[str | dict[str, Any] | None]) -> None:
        """Rows appended at the end of the index, with their metadata (JSON text or dicts)."""
        start, self._n = self._n, self._n + len(metas)
        self._writes += 1
        for col in self._cols.values():
            col.grow(self._n)
        if self._cols:
            self._set(list(range(start, self._n)), metas)

    def replace(self, rows: Sequence[int], metas: Sequence[str | dict[str, Any] | None]) -> None:
        """Existing rows whose metadata was replaced."""
        self._writes += 1
        if self._cols:
            self._set(list(rows), metas)

    def remove(self, removed: int, moves: Sequence[tuple[int, int]]) -> None:
        """Rows deleted by ``vqvae.search.swap_remove_plan``'s moves, applied in their order."""
        self._writes += 1
        for col in self._cols.values():
            for arr in (col.vids, col.numbers):
                if arr is not None:
                    for src, dst in moves:
                        arr[dst] = arr[src]
            col.set_rows(list(range(self._n - removed, self._n)), [-1] * removed)
        self._n -= removed

    # ---- evaluation ------------------------------------------------------------------------

    def check(self, flt: Filter, conn: sqlite3.Connection) -> None:
        """Build the columns ``flt`` needs, and refuse (``InvalidFilter``) what the collection
        shows to be a mistake: a required key (:attr:`Filter.required_keys`) that no item holds,
        in a collection with items; a range bound of a type the key holds none of."""
        self.ensure(flt.keys, conn)
        if self._n:
            for key in flt.required_keys:
                if not self._held(self._cols[key]):
                    if self._cols[key].size == 0:  # nothing to keep current: a typo must not cost memory
                        del self._cols[key]
                    raise InvalidFilter(_unknown_key(key, conn, [k for k, c in self._cols.items()
                                                                 if c.size and self._held(c)]))
            for cond in flt.conditions:
                if cond.op in RANGE_OPERATORS:
                    _check_range(self._cols[cond.key], cond)

    def _held(self, col: _Column) -> bool:
        """Does some row hold the column's key? (One pass over the column per write, cached.)"""
        if col.size == 0:
            return False
        if col.held is None or col.held[0] != self._writes:
            col.held = (self._writes, bool(np.any(col.vids[: self._n] != -1)))
        return col.held[1]

    def mask(self, flt: Filter, conn: sqlite3.Connection) -> np.ndarray:
        """bool [n]: True for the rows ``flt`` matches. Raises ``InvalidFilter`` (see :meth:`check`)."""
        self.check(flt, conn)
        return self._eval(flt)

    def rows(self, flt: Filter, conn: sqlite3.Connection) -> np.ndarray:
        """The rows (ascending int64) that ``flt`` matches."""
        return np.flatnonzero(self.mask(flt, conn))

    def _eval(self, node: Filter | Condition) -> np.ndarray:
        """A fresh bool [n] mask of ``node`` (each part's mask is new, so combined in place)."""
        if isinstance(node, Condition):
            return self._mask(self._cols[node.key], node)
        if node.op == "not":
            m = self._eval(node.parts[0])
            return np.logical_not(m, out=m)
        combine = np.logical_and if node.op == "and" else np.logical_or
        mask: np.ndarray | None = None
        for part in node.parts:
            m = self._eval(part)
            mask = m if mask is None else combine(mask, m, out=mask)
        assert mask is not None
        return mask

    def _mask(self, col: _Column, cond: Condition) -> np.ndarray:
        """The rows' mask, by the cheapest route. The condition is decided once per distinct
        value; then few matching (or few non-matching) values are compared against the int32
        column one by one, since a gather through the vocabulary costs about as much as 40 such
        compares; a numeric range over many distinct numbers compares a float column instead."""
        vids = col.vids[: self._n]
        size = col.size
        numeric_range = cond.op in RANGE_OPERATORS and not isinstance(cond.value, str)
        if numeric_range and size > self._n // 8:  # about one value per item (timestamps): rows at once
            return self._number_mask(col, cond, vids)
        match = self._vocab_match(col, cond)  # bool [V]: values for which the condition holds
        missing = cond.op == "ne"  # an item without the key: only "ne" holds
        if missing:
            match = ~match
        hits = np.flatnonzero(match)
        if numeric_range and min(len(hits), size - len(hits)) > FEW_VALUES:
            return self._number_mask(col, cond, vids)
        return self._mask_of(vids, hits, size, missing)

    def _number_mask(self, col: _Column, cond: Condition, vids: np.ndarray) -> np.ndarray:
        """A numeric range on the float column, and on the lists with an element in range."""
        out = _compare(col.number_rows(self._n), cond.op, cond.value)
        if col.has_lists:
            owners, elems = col.array("owners"), col.array("elems")
            lists = np.unique(owners[_compare(col.num[elems], cond.op, cond.value)])
            if len(lists):
                out |= self._mask_of(vids, lists, col.size, False)
        return out

    def _mask_of(self, vids: np.ndarray, hits: np.ndarray, size: int, missing: bool) -> np.ndarray:
        """Rows whose value id is in ``hits`` (or that lack the key, when ``missing``)."""
        if len(hits) <= min(FEW_VALUES, size - len(hits)):
            out = vids == -1 if missing else np.zeros(self._n, dtype=bool)
            for v in hits.tolist():
                out |= vids == v
            return out
        if size - len(hits) <= FEW_VALUES:
            miss = np.ones(size, dtype=bool)
            miss[hits] = False
            out = np.ones(self._n, dtype=bool) if missing else vids != -1
            for v in np.flatnonzero(miss).tolist():
                out &= vids != v
            return out
        lut = np.zeros(size + 1, dtype=bool)
        lut[hits], lut[-1] = True, missing  # vid -1 (key absent) reads the last entry
        return lut[vids]

    def _vocab_match(self, col: _Column, cond: Condition) -> np.ndarray:
        """Over the vocabulary: does each value, or (for lists) one of its elements, match?"""
        direct = np.zeros(col.size, dtype=bool)
        if cond.op in ("eq", "ne", "in"):
            targets = cond.value if cond.op == "in" else (cond.value,)
            direct[[col.ids[t] for t in targets if t in col.ids]] = True
        elif isinstance(cond.value, str):
            strs = col.array("strs")
            if len(strs):
                direct[col.array("str_ids")] = _compare(strs, cond.op, cond.value)
        else:
            direct = _compare(col.num, cond.op, cond.value)  # NaN (not a number) compares False
        if col.has_lists and direct.any():
            owners, elems = col.array("owners"), col.array("elems")
            direct[owners[direct[elems]]] = True
        return direct


def _check_range(col: _Column, cond: Condition) -> None:
    """A range bound of a type the key holds none of (while it holds something) is a mistake."""
    is_str = isinstance(cond.value, str)
    if (col.n_strings if is_str else col.n_numbers) or col.size == 0:
        return
    kinds = col.kinds()
    hint = ""
    if is_str and "numbers" in kinds:
        try:
            number = float(cond.value)
            if math.isfinite(number):
                as_json = json.dumps(int(number) if number.is_integer() else number)
                hint = f'; send the number: {{"{cond.op}": {as_json}}}'
        except ValueError:
            pass
    elif not is_str and "strings" in kinds:
        hint = f'; send a string to compare as text: {{"{cond.op}": {json.dumps(str(cond.value))}}}'
    got = f"the string {json.dumps(cond.value)[:80]}" if is_str else f"the number {cond.value}"
    raise InvalidFilter(
        f"filter[{cond.key!r}].{cond.op}: {cond.key!r} holds {' and '.join(kinds)}, no "
        f"{'strings' if is_str else 'numbers'}; {cond.op!r} got {got} (ranges compare numbers with numbers "
        f"and strings with strings){hint}")


def _unknown_key(key: str, conn: sqlite3.Connection, held: list[str]) -> str:
    """The message for a filter on a key no item holds: keys the items do hold (those of the
    first KEYS_SAMPLE items with metadata, and of the columns held), and the closest of them."""
    seen = set(held)
    try:
        seen.update(k for (k,) in conn.execute(
            "SELECT DISTINCT j.key FROM (SELECT metadata FROM items WHERE metadata IS NOT NULL AND "
            "json_valid(metadata) AND json_type(metadata) = 'object' LIMIT ?) AS i, json_each(i.metadata) AS j",
            (KEYS_SAMPLE,)))
    except sqlite3.Error:  # an SQLite without JSON: the columns' keys only
        pass
    keys = sorted(k for k in seen if isinstance(k, str))
    close = difflib.get_close_matches(key, keys, n=1)
    listed = ", ".join(map(repr, keys[:10])) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
    return (f"no item of this collection has metadata key {key!r}, so filter[{key!r}] can match nothing"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + (f"; keys the items hold: {listed}" if keys else "; no item has metadata"))


def _parse(raw: str) -> Canon:
    """``canon(json.loads(raw))``, with a shortcut for plain strings and integers."""
    if raw[0] == '"' and "\\" not in raw:
        return raw[1:-1]
    if raw.isdigit() or (raw[0] == "-" and raw[1:].isdigit()):
        return int(raw)
    return canon(json.loads(raw))


def _load_sql(conn: sqlite3.Connection, cols: dict[str, _Column]) -> None:
    """``metadata -> '$."key"'`` gives each row's value as JSON text (NULL: no such key), so
    SQLite parses each row once per key in C and Python decodes each distinct text once."""
    keys = list(cols)
    select = ", ".join(f"metadata -> ?{i + 1}" for i in range(len(keys)))
    params = [f'$."{k}"' for k in keys]
    cur = conn.execute(f"SELECT slot, {select} FROM items WHERE metadata IS NOT NULL", params)
    seen: list[dict[str | None, int]] = [{None: -1} for _ in keys]  # JSON text → value id
    columns = list(cols.values())
    while batch := cur.fetchmany(65536):
        slots = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
        for i, col in enumerate(columns):
            known, vids = seen[i], []
            for r in batch:
                raw = r[i + 1]
                vid = known.get(raw)
                if vid is None:
                    vid = known[raw] = col.vid(_parse(raw))
                vids.append(vid)
            col.vids[slots] = vids


def _load_python(conn: sqlite3.Connection, cols: dict[str, _Column]) -> None:
    """Keys SQLite's JSON paths cannot spell (a ``"`` or ``\\`` in the key): parsed here."""
    cur = conn.execute("SELECT slot, metadata FROM items WHERE metadata IS NOT NULL")
    while batch := cur.fetchmany(8192):
        for slot, raw in batch:
            meta = json.loads(raw)
            for key, col in cols.items():
                if isinstance(meta, dict) and key in meta:
                    col.vids[slot] = col.vid(canon(meta[key]))
