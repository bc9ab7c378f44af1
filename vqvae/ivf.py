"""Partitioned (IVF) search over stored codes, built on faiss ``IndexIVFPQ``.

A partitioned index keeps the same 4 bytes per vector as :class:`vqvae.search.CodeIndex` and
scores them with the same asymmetric distances, but a query visits only the ``probe``
partitions ("lists") nearest to it instead of every stored code:

* **fine quantizer** — ``faiss.IndexIVFPQ`` with ``by_residual`` off and its product
  quantizer's centroids set to our codebooks, so the distance of a query to a stored code is
  exactly CodeIndex's ADC distance (same look-up tables, faiss's IVF scanner);
* **coarse quantizer** — the lists' centroids are themselves codes: k-means over the latent
  space with every centroid snapped to the nearest point of the code grid (per head, the nearest
  codebook entry of the centroid's slice). The coarse quantizer is a ``faiss.IndexPQ`` holding
  those codes under the same codebooks (the IVF's quantizer), and ranking the lists for a query
  is the same ADC over ``lists`` codes — 4 look-ups each into the query's own tables (faiss's
  ``compute_distance_tables``), then ``search_preassigned`` — rather than a float matrix
  product; the centroids cost 4 bytes a list. On the bench's codes the snapped centroids also
  measured better recall per scanned code than unconstrained float k-means (docs/scaling.md);
* **assignment** — an item goes to the list whose centroid code is nearest to its quantised
  latent z_q (symmetric distance between codes, ``ProductQuantizer.search_sdc``): a pure
  function of the item's codes, so re-training never re-encodes anything and an item is found
  again from its codes alone;
* **entries** — each list entry is the item's code bytes plus faiss's 8-byte id, which here is
  ``row << 32 | codes`` (the codes packed little-endian): a search label carries both the row
  and the codes the re-ranker decodes, so nothing else is kept per vector — 12 bytes each, the
  lists' own overhead (two vectors and a 4-byte centroid per list) aside.

Until it is trained an index has one list (every query scans everything: exactly the flat
search). :meth:`IVFCodeIndex.train` fits the centroids on (a sample of) the stored codes and
re-assigns every entry; :func:`kmeans_latent` is the k-means (faiss's, on z_q, then snapped;
:func:`kmeans_codes`, Lloyd's iterations kept on the grid, measured worse). The inverted
multi-index variant (``coarse="imi"``, :class:`MultiIndexLists`: list = the first two heads'
codes) needs no training and costs nothing to assign; bench/bench_ivf.py compares the two.

Rows are the caller's dense row numbers (``service.collections`` keeps them equal to its SQLite
slots) and change only through :meth:`add`, :meth:`replace` and :meth:`remove`, exactly as for
CodeIndex, which is why the caller can apply one swap-remove plan to both. Not thread-safe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import faiss
import numpy as np
import torch

from vqvae.search import (
    MAX_CODES,
    METRIC_LATENT_COSINE,
    METRIC_NEG_L2,
    Decoder,
    SearchResult,
    adc_scores,
    rerank_by_cosine,
    rerank_queries,
)

log = logging.getLogger(__name__)

ROW_SHIFT = 32
CODE_MASK = (1 << ROW_SHIFT) - 1
MAX_ROWS = 1 << 31  # rows fit the upper half of a positive int64 label
MAX_LISTS = 65_536
TRAIN_POINTS_PER_LIST = 32  # k-means sample: this many codes per list (faiss suggests ≥ 39 for floats)
TRAIN_ITERATIONS = 10
PROBE_FRACTION = 64  # default probe: at least lists / 64 ...
PROBE_MIN_SCAN = 32_768  # ... and enough lists to scan about this many codes (small collections: all)
PROBE_MIN = 8
COARSE = ("kmeans", "imi")


def default_lists(n: int) -> int:
    """Lists for ``n`` items when the caller did not say: ≈ √n, a power of two in 16..16384
    (assigning n items costs n × lists code-to-code distances, so more lists cost build time)."""
    if n <= 0:
        return 16
    return int(min(16384, max(16, 2 ** round(math.log2(math.sqrt(n))))))


def default_probe(lists: int, n: int) -> int:
    """Lists visited when a search does not say: at least ``lists/64``, and enough to scan about
    32 768 codes, so small collections are searched (almost) exhaustively; at least 8."""
    if lists <= 1:
        return 1
    need = max(math.ceil(lists / PROBE_FRACTION), math.ceil(lists * PROBE_MIN_SCAN / max(n, 1)), PROBE_MIN)
    return int(min(lists, need))


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """uint8 [N, H≤4] → int64 [N]: the codes as one little-endian word."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    h = c.shape[1]
    if h < 4:
        c = np.concatenate([c, np.zeros((len(c), 4 - h), np.uint8)], axis=1)
    return c.view("<u4").reshape(-1).astype(np.int64)


def unpack_codes(labels: np.ndarray, num_heads: int) -> np.ndarray:
    """int64 labels (or packed words) → uint8 [N, H]."""
    words = (np.asarray(labels, dtype=np.int64) & CODE_MASK).astype("<u4")
    return words.view(np.uint8).reshape(-1, 4)[:, :num_heads]


def _labels(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return (np.asarray(rows, dtype=np.int64) << ROW_SHIFT) | pack_codes(codes)


def _trim() -> None:
    """Hand freed heap pages back to the OS after a rebuild (glibc keeps them otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _pq(codebooks: np.ndarray) -> faiss.ProductQuantizer:
    h, k, d = codebooks.shape
    pq = faiss.ProductQuantizer(h * d, h, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), pq.centroids)
    return pq


def _pad(codebooks: np.ndarray | torch.Tensor) -> np.ndarray:
    cb = codebooks.detach().cpu().numpy() if isinstance(codebooks, torch.Tensor) else np.asarray(codebooks)
    if cb.ndim != 3:
        raise ValueError(f"codebooks must be [heads, codes, dim], got shape {list(cb.shape)}")
    h, k, d = cb.shape
    if k > MAX_CODES:
        raise ValueError(f"at most {MAX_CODES} codes per head fit in a byte, got {k}")
    if h > 4:
        raise ValueError(f"partitioned indexes pack the codes into 32 bits: at most 4 heads, got {h}")
    padded = np.zeros((h, MAX_CODES, d), dtype=np.float32)
    padded[:, :k] = cb
    return padded


class SDCAssigner:
    """Nearest centroid code of each code by symmetric (code-to-code) latent distance."""

    def __init__(self, codebooks: np.ndarray) -> None:
        self.pq = _pq(codebooks)
        self.pq.compute_sdc_table()

    def __call__(self, codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """int64 [N]: for each row of ``codes``, the index of its nearest row of ``centroids``
        (the first on ties). Each distinct code is looked up once."""
        n = len(codes)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if len(centroids) == 1:
            return np.zeros(n, dtype=np.int64)
        words = pack_codes(codes)
        uniq, inverse = np.unique(words, return_inverse=True)
        q = np.ascontiguousarray(unpack_codes(uniq, codes.shape[1]))
        c = np.ascontiguousarray(centroids, dtype=np.uint8)
        dist = np.empty((len(q), 1), dtype=np.float32)
        idx = np.empty((len(q), 1), dtype=np.int64)
        heap = faiss.float_maxheap_array_t()
        heap.nh, heap.k = len(q), 1
        heap.val, heap.ids = faiss.swig_ptr(dist), faiss.swig_ptr(idx)
        self.pq.search_sdc(faiss.swig_ptr(q), len(q), faiss.swig_ptr(c), len(c), heap, True)
        return idx[:, 0][inverse.reshape(-1)]


def snap(means: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """uint8 [L, H]: per head, the codebook entry nearest to each row of ``means`` [L, H·D]."""
    h, _, d = codebooks.shape
    m = means.reshape(len(means), h, d)
    out = np.empty((len(means), h), dtype=np.uint8)
    for j in range(h):
        cb = codebooks[j].astype(np.float64)
        score = (cb * cb).sum(-1)[None, :] - 2.0 * m[:, j].astype(np.float64) @ cb.T
        out[:, j] = np.argmin(score, axis=1)
    return out


def kmeans_codes(
    codes: np.ndarray,
    codebooks: np.ndarray,
    lists: int,
    iterations: int = TRAIN_ITERATIONS,
    seed: int = 0,
    assigner: SDCAssigner | None = None,
    num_codes: int | None = None,
) -> np.ndarray:
    """k-means over the quantised latents z_q of ``codes``, with centroids kept on the code grid.

    Lloyd's iterations: assign each code to its nearest centroid code (symmetric distance), then
    move each centroid to the mean z_q of its members snapped to the grid (per head, the nearest
    codebook entry). Starts from ``lists`` distinct codes drawn at random (seeded); empty or
    duplicate centroids are re-seeded with unused codes. Returns uint8 [lists', H], lists' ≤ lists
    only when fewer distinct codes exist. Deterministic for a given input and seed.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    h = codes.shape[1]
    k = num_codes or codebooks.shape[1]
    rng = np.random.default_rng(seed)
    words = pack_codes(codes)
    distinct = np.unique(words)
    lists = int(min(lists, len(distinct)))
    if lists <= 1:
        return unpack_codes(distinct[:1], h).copy()
    assigner = assigner or SDCAssigner(codebooks)
    cent_words = rng.choice(distinct, lists, replace=False)
    cb = codebooks[:, :k].astype(np.float64)  # [H, K, D]
    for it in range(iterations):
        centroids = unpack_codes(cent_words, h)
        assign = assigner(codes, centroids)
        sizes = np.bincount(assign, minlength=lists)
        means = np.zeros((lists, h, cb.shape[2]), dtype=np.float64)
        for j in range(h):
            counts = np.bincount(assign * k + codes[:, j], minlength=lists * k).reshape(lists, k)
            means[:, j] = counts @ cb[j]
        means /= np.maximum(sizes, 1)[:, None, None]
        new = pack_codes(snap(means.reshape(lists, -1), codebooks[:, :k]))
        new[sizes == 0] = cent_words[sizes == 0]
        # distinct centroids: a repeated code would leave all but one of its lists empty
        _, first = np.unique(new, return_index=True)
        dup = np.setdiff1d(np.arange(lists), first)
        empty = np.flatnonzero(sizes == 0)
        reseed = np.union1d(dup, empty)
        if len(reseed):
            unused = np.setdiff1d(distinct, np.delete(new, reseed))
            new[reseed] = rng.choice(unused, len(reseed), replace=False)
        moved = int((new != cent_words).sum())
        cent_words = new
        log.debug("k-means iteration %d: %d centroids moved, %d re-seeded", it, moved, len(reseed))
        if moved == 0:
            break
    return np.ascontiguousarray(unpack_codes(cent_words, h))


def kmeans_latent(
    codes: np.ndarray, codebooks: np.ndarray, lists: int, iterations: int = 10, seed: int = 0,
    num_codes: int | None = None,
) -> np.ndarray:
    """k-means (faiss) over the quantised latents z_q of ``codes``, each centroid then snapped to the
    code grid; duplicates after snapping are replaced by unused sample codes. uint8 [lists', H].

    Measured against :func:`kmeans_codes` (Lloyd's iterations kept on the grid) on the bench's
    codes: better balanced lists and ~3 points more recall at the same probe (docs/scaling.md)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    h = codes.shape[1]
    k = num_codes or codebooks.shape[1]
    distinct = np.unique(pack_codes(codes))
    lists = int(min(lists, len(distinct)))
    if lists <= 1:
        return unpack_codes(distinct[:1], h).copy()
    z = np.concatenate([codebooks[j][codes[:, j]] for j in range(h)], axis=1).astype(np.float32)
    km = faiss.Kmeans(z.shape[1], lists, niter=iterations, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(z)
    words = pack_codes(snap(km.centroids, codebooks[:, :k]))
    _, first = np.unique(words, return_index=True)
    dup = np.setdiff1d(np.arange(lists), first)
    if len(dup):
        unused = np.setdiff1d(distinct, words)
        words[dup] = np.random.default_rng(seed).choice(unused, len(dup), replace=False)
    return np.ascontiguousarray(unpack_codes(words, h))


class MultiIndexLists:
    """Inverted multi-index lists on the first two heads: list = c0 · K + c1 (no training).

    The lists a query visits are the ``probe`` pairs with the smallest sum of its head-0 and
    head-1 ADC tables (exact multi-sequence: the best ``p`` pairs lie within the best ``p`` codes
    of each head)."""

    def __init__(self, codebooks: np.ndarray) -> None:
        self.codebooks = codebooks
        self.lists = MAX_CODES * MAX_CODES

    def assign(self, codes: np.ndarray) -> np.ndarray:
        return codes[:, 0].astype(np.int64) * MAX_CODES + codes[:, 1]

    def probe(self, tables: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """``tables``: the queries' ADC tables [Q, H, 256] (squared distances)."""
        p = min(probe, MAX_CODES)
        a = np.argsort(tables[:, 0], axis=1)[:, :p]  # each head's codes, nearest first
        b = np.argsort(tables[:, 1], axis=1)[:, :p]
        ta = np.take_along_axis(tables[:, 0], a, 1)
        tb = np.take_along_axis(tables[:, 1], b, 1)
        # a pair of ranks (i, j) is beaten by the (i+1)(j+1)-1 pairs of lower ranks on both heads,
        # so the best ``probe`` pairs all have (i+1)(j+1) ≤ probe: score only those
        i, j = np.nonzero((np.arange(1, p + 1)[:, None] * np.arange(1, p + 1)[None, :]) <= probe)
        pair = ta[:, i] + tb[:, j]
        lists = a[:, i].astype(np.int64) * MAX_CODES + b[:, j]
        top = np.argpartition(pair, probe - 1, axis=1)[:, :probe] if probe < pair.shape[1] else \
            np.broadcast_to(np.arange(pair.shape[1]), pair.shape)
        return (np.ascontiguousarray(np.take_along_axis(pair, top, 1), np.float32),
                np.ascontiguousarray(np.take_along_axis(lists, top, 1)))


class IVFCodeIndex:
    """Codes in inverted lists, searched by ADC over the ``probe`` nearest lists.

    The same interface as :class:`vqvae.search.CodeIndex` (``add``, ``replace``, ``remove``,
    ``search``, ``len``), plus :meth:`train`. ``replace`` and ``remove`` locate an item's entry
    from its previous codes (``old_codes``/``codes``: a mapping row → codes, or arrays aligned with
    the rows); without them every list is scanned for the rows, which is slower but correct.
    """

    kind = "ivf"
    needs_old_codes = True  # callers that can should pass the codes of rows they change

    def __init__(
        self,
        codebooks: np.ndarray | torch.Tensor,
        centroids: np.ndarray | None = None,
        latent_unit_heads: bool = False,
        probe: int | None = None,
        backend: str = "faiss",
        coarse: str = "kmeans",
    ) -> None:
        self.codebooks = _pad(codebooks)
        self.num_heads, _, self.head_dim = self.codebooks.shape
        self.codebook_size = int(codebooks.shape[1])
        if coarse not in COARSE:
            raise ValueError(f"coarse must be one of {COARSE}, got {coarse!r}")
        self.coarse = coarse
        self._imi = MultiIndexLists(self.codebooks) if coarse == "imi" else None
        self.dim = self.num_heads * self.head_dim
        self.metric = METRIC_LATENT_COSINE if latent_unit_heads else METRIC_NEG_L2
        self.backend = backend  # kept for the caller's bookkeeping; the scan is faiss's IVF scanner
        self.probe = probe
        self._assigner = SDCAssigner(self.codebooks)
        self._flat_pq = _pq(self.codebooks)
        self._n = 0
        self._build(None if centroids is None else np.asarray(centroids, dtype=np.uint8))

    # ---- structure -----------------------------------------------------------------------

    def _build(self, centroids: np.ndarray | None) -> None:
        """An empty IVF over ``centroids`` (None: untrained, one list)."""
        if self._imi is not None:  # lists are code pairs: nothing to train, no coarse index
            quantizer = faiss.IndexFlatL2(self.dim)
            ivf = faiss.IndexIVFPQ(quantizer, self.dim, self._imi.lists, self.num_heads, 8)
            faiss.copy_array_to_vector(self.codebooks.ravel(), ivf.pq.centroids)
            ivf.by_residual = False
            ivf.is_trained = True
            self._quantizer, self._ivf, self._centroids = quantizer, ivf, None
            self._added_since_compact = 0
            return
        trained = centroids is not None and len(centroids) > 1
        cent = centroids if trained else np.zeros((1, self.num_heads), dtype=np.uint8)
        if len(cent) > MAX_LISTS:
            raise ValueError(f"at most {MAX_LISTS} lists, got {len(cent)}")
        if cent.ndim != 2 or cent.shape[1] != self.num_heads:
            raise ValueError(f"centroids must have shape [lists, {self.num_heads}], got {list(cent.shape)}")
        quantizer = faiss.IndexPQ(self.dim, self.num_heads, 8)
        faiss.copy_array_to_vector(self.codebooks.ravel(), quantizer.pq.centroids)
        quantizer.is_trained = True
        quantizer.add_sa_codes(np.ascontiguousarray(cent))
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, len(cent), self.num_heads, 8)
        faiss.copy_array_to_vector(self.codebooks.ravel(), ivf.pq.centroids)
        ivf.by_residual = False
        ivf.is_trained = True
        self._quantizer, self._ivf = quantizer, ivf
        self._centroids = np.ascontiguousarray(cent) if trained else None
        self._added_since_compact = 0

    @property
    def trained(self) -> bool:
        return self._centroids is not None or self._imi is not None

    @property
    def centroids(self) -> np.ndarray | None:
        """uint8 [lists, H] (the coarse centroids as codes), or None while untrained."""
        return None if self._centroids is None else self._centroids.copy()

    @property
    def lists(self) -> int:
        return int(self._ivf.nlist)

    def __len__(self) -> int:
        return self._n

    def reserve(self, capacity: int) -> None:  # CodeIndex's bulk-load hint; lists size themselves
        del capacity

    def list_sizes(self) -> np.ndarray:
        inv = self._ivf.invlists
        return np.fromiter((inv.list_size(i) for i in range(self.lists)), dtype=np.int64, count=self.lists)

    @property
    def nbytes(self) -> int:
        """Bytes held for the stored vectors: code bytes and 8-byte ids of every entry, the lists'
        vector headers (2 × 24 bytes each) and their centroid codes."""
        return int(self._n * (self.num_heads + 8) + self.lists * (48 + self.num_heads))

    def default_probe(self) -> int:
        if self.probe is not None:
            return self.probe
        if self._imi is not None:  # 65 536 small, uneven cells: at least 64, and ~4 096 codes' worth
            return int(min(self.lists, max(64, math.ceil(self.lists * 4096 / max(self._n, 1)))))
        return default_probe(self.lists, self._n)

    def _ids(self, lst: int) -> np.ndarray:
        inv = self._ivf.invlists
        n = inv.list_size(lst)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return faiss.rev_swig_ptr(inv.get_ids(lst), n).view(np.int64)

    def _codes(self, lst: int) -> np.ndarray:
        inv = self._ivf.invlists
        n = inv.list_size(lst)
        if n == 0:
            return np.zeros((0, self.num_heads), dtype=np.uint8)
        return faiss.rev_swig_ptr(inv.get_codes(lst), n * self.num_heads).view(np.uint8).reshape(n, self.num_heads)

    def labels(self) -> np.ndarray:
        """Every entry's label (row << 32 | codes), list by list."""
        parts = [self._ids(i).copy() for i in range(self.lists)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def codes(self) -> np.ndarray:
        """The stored codes by row, uint8 [n, H] (a copy, assembled from the lists)."""
        labels = self.labels()
        out = np.zeros((self._n, self.num_heads), dtype=np.uint8)
        out[labels >> ROW_SHIFT] = unpack_codes(labels, self.num_heads)
        return out

    def assign(self, codes: np.ndarray) -> np.ndarray:
        """The list of each code row (a function of the codes alone)."""
        if self._imi is not None:
            return self._imi.assign(codes)
        if self._centroids is None:
            return np.zeros(len(codes), dtype=np.int64)
        return self._assigner(codes, self._centroids)

    def _add_labels(self, labels: np.ndarray, codes: np.ndarray, lists: np.ndarray) -> None:
        order = np.argsort(lists, kind="stable")
        lists, labels, codes = lists[order], np.ascontiguousarray(labels[order]), np.ascontiguousarray(codes[order])
        uniq, starts = np.unique(lists, return_index=True)
        ends = np.append(starts[1:], len(lists))
        inv = self._ivf.invlists
        for lst, s, e in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
            inv.add_entries(lst, e - s, faiss.swig_ptr(labels[s:e]), faiss.swig_ptr(codes[s:e]))
        self._ivf.ntotal = int(self._ivf.ntotal) + len(labels)
        self._added_since_compact += len(labels)

    def _rebuild(self, centroids: np.ndarray | None, labels: np.ndarray) -> None:
        """Fresh lists over ``centroids`` holding ``labels``; each list allocated once, exactly."""
        self._build(centroids)
        if len(labels):
            codes = np.ascontiguousarray(unpack_codes(labels, self.num_heads))
            self._add_labels(labels, codes, self.assign(codes))
        self._added_since_compact = 0
        _trim()

    def compact(self) -> None:
        """Re-allocate every list at its exact size (lists grown entry by entry keep up to 2×
        the room they use, as any growing array does). Same entries, same answers."""
        self._rebuild(self._centroids, self.labels())

    def finish_load(self) -> None:
        """After a bulk load by chunks (``service.collections`` calls it): exact-size lists."""
        if self._added_since_compact:
            self.compact()

    def train(
        self,
        lists: int | None = None,
        sample: int | None = None,
        seed: int = 0,
        iterations: int = TRAIN_ITERATIONS,
        centroids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fit the coarse centroids on the stored codes (or take ``centroids``) and re-assign every
        entry. Needs no embeddings: the codes are all it uses. Returns the centroids."""
        labels = self.labels()
        if self._imi is not None:
            raise ValueError("multi-index lists are the codes themselves: there is nothing to train")
        if centroids is None:
            lists = lists or default_lists(self._n)
            want = sample or lists * TRAIN_POINTS_PER_LIST
            rng = np.random.default_rng(seed)
            pick = labels if len(labels) <= want else labels[np.sort(rng.choice(len(labels), want, replace=False))]
            centroids = kmeans_latent(unpack_codes(pick, self.num_heads), self.codebooks, lists, iterations,
                                      seed, self.codebook_size)
        centroids = np.ascontiguousarray(centroids, dtype=np.uint8)
        if centroids.size and int(centroids.max()) >= self.codebook_size:
            raise ValueError(f"centroid codes must lie in 0..{self.codebook_size - 1}")
        self._rebuild(centroids if len(centroids) > 1 else None, labels)
        return centroids

    # ---- storage -------------------------------------------------------------------------

    def _check(self, codes: np.ndarray) -> np.ndarray:
        arr = np.asarray(codes)
        if arr.ndim == 1 and arr.shape[0] == self.num_heads:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.num_heads:
            raise ValueError(f"codes must have shape [N, {self.num_heads}], got {list(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in 0..{self.codebook_size - 1}")
        return np.ascontiguousarray(arr, dtype=np.uint8)

    def _rows(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= self._n):
            raise IndexError(f"rows must lie in 0..{self._n - 1}")
        return r

    def add(self, codes: np.ndarray) -> np.ndarray:
        """Append rows; returns their row numbers (int64)."""
        c = self._check(codes)
        rows = np.arange(self._n, self._n + len(c), dtype=np.int64)
        if self._n + len(c) > MAX_ROWS:
            raise ValueError(f"a partitioned index holds at most {MAX_ROWS} rows")
        if len(c):
            self._add_labels(_labels(rows, c), c, self.assign(c))
        self._n += len(c)
        return rows

    def _codes_for(self, rows: np.ndarray, hint: Mapping[int, Sequence[int]] | np.ndarray | None) -> np.ndarray | None:
        if hint is None:
            return None
        if isinstance(hint, Mapping):
            if not all(int(r) in hint for r in rows):
                return None
            return self._check(np.asarray([list(hint[int(r)]) for r in rows]).reshape(len(rows), self.num_heads))
        arr = self._check(hint)
        return arr if len(arr) == len(rows) else None

    def _locate(self, rows: np.ndarray, codes: np.ndarray | None) -> dict[int, tuple[int, int]]:
        """row → (list, label) of each row's entry; from its codes when known, else by a scan."""
        found: dict[int, tuple[int, int]] = {}
        if codes is not None and len(rows):
            want = _labels(rows, codes)
            lists = self.assign(codes)
            for lst in np.unique(lists).tolist():
                sel = lists == lst
                ids = self._ids(lst)
                hit = np.isin(want[sel], ids)
                for r, lab in zip(rows[sel][hit].tolist(), want[sel][hit].tolist(), strict=True):
                    found[r] = (lst, lab)
        missing = np.setdiff1d(rows, np.fromiter(found, dtype=np.int64, count=len(found)))
        if len(missing):
            if codes is not None:
                log.warning("ivf: %d entries not in the list their codes give; scanning every list", len(missing))
            for lst in range(self.lists):
                ids = self._ids(lst)
                if not len(ids):
                    continue
                hit = np.isin(ids >> ROW_SHIFT, missing)
                for lab in ids[hit].tolist():
                    found[lab >> ROW_SHIFT] = (lst, lab)
        if len(found) != len(np.unique(rows)):
            raise KeyError("ivf: some rows have no entry")
        return found

    def _edit(self, drop: dict[int, set[int]], relabel: dict[int, dict[int, int]]) -> None:
        """Per list: remove entries with labels in ``drop[list]``, then rename ``relabel[list]``
        (in that order: a renamed entry may take the label of a removed one)."""
        inv = self._ivf.invlists
        for lst in set(drop) | set(relabel):
            ids = self._ids(lst)
            gone = drop.get(lst)
            if gone:
                codes = self._codes(lst)
                keep = ~np.isin(ids, np.fromiter(gone, dtype=np.int64, count=len(gone)))
                m = int(keep.sum())
                ids[:m] = ids[keep]
                codes[:m] = codes[keep]
                inv.resize(lst, m)
                self._ivf.ntotal = int(self._ivf.ntotal) - (len(ids) - m)
                ids = self._ids(lst)
            ren = relabel.get(lst)
            if ren:
                old = np.fromiter(ren, dtype=np.int64, count=len(ren))
                new = np.fromiter(ren.values(), dtype=np.int64, count=len(ren))
                pos = np.flatnonzero(np.isin(ids, old))
                order = np.argsort(old)
                ids[pos] = new[order[np.searchsorted(old, ids[pos], sorter=order)]]

    def replace(
        self, rows: np.ndarray | Sequence[int], codes: np.ndarray, old_codes: np.ndarray | Mapping | None = None
    ) -> None:
        """Overwrite existing rows (an upsert of a known id): the entry moves to its new list."""
        r = self._rows(rows)
        c = self._check(codes)
        if len(r) != len(c):
            raise ValueError(f"{len(r)} rows but {len(c)} code rows")
        if len(np.unique(r)) != len(r):
            raise ValueError("rows repeat")
        where = self._locate(r, self._codes_for(r, old_codes))
        new_labels = _labels(r, c)
        changed = [i for i, row in enumerate(r.tolist()) if where[row][1] != int(new_labels[i])]
        if not changed:
            return
        drop: dict[int, set[int]] = {}
        for i in changed:
            lst, lab = where[int(r[i])]
            drop.setdefault(lst, set()).add(lab)
        self._edit(drop, {})
        idx = np.asarray(changed)
        self._add_labels(new_labels[idx], c[idx], self.assign(c[idx]))

    def remove(
        self,
        rows: np.ndarray | Sequence[int],
        moves: list[tuple[int, int]] | None = None,
        codes: np.ndarray | Mapping | None = None,
    ) -> list[tuple[int, int]]:
        """Delete rows and renumber as ``moves`` (``vqvae.search.swap_remove_plan``) says.

        ``codes``: a mapping row → codes of the rows as they were before this call (the removed
        rows and the sources of the moves), so entries are found from their codes."""
        from vqvae.search import swap_remove_plan

        r = np.unique(self._rows(rows))
        if moves is None:
            moves = swap_remove_plan(self._n, r)
        holder: dict[int, int] = {}  # current row → the original row whose item is there now
        for src, dst in moves:
            holder[dst] = holder.pop(src, src)
        final = {orig: row for row, orig in holder.items()}  # original row → its new row
        touched = np.union1d(r, np.fromiter(final, dtype=np.int64, count=len(final)))
        if isinstance(codes, Mapping):
            hint = codes
        elif codes is not None:
            raise TypeError("remove() takes the previous codes as a mapping row → codes")
        else:
            hint = None
        where = self._locate(touched, self._codes_for(touched, hint))
        drop: dict[int, set[int]] = {}
        relabel: dict[int, dict[int, int]] = {}
        for row in r.tolist():
            lst, lab = where[row]
            drop.setdefault(lst, set()).add(lab)
        for orig, row in final.items():
            lst, lab = where[orig]
            relabel.setdefault(lst, {})[lab] = (row << ROW_SHIFT) | (lab & CODE_MASK)
        self._edit(drop, relabel)
        self._n -= len(r)
        return moves

    # ---- search --------------------------------------------------------------------------

    def _check_latent(self, z_e: np.ndarray) -> np.ndarray:
        z = np.asarray(z_e, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"latent queries must have shape [Q, {self.dim}], got {list(z.shape)}")
        return np.ascontiguousarray(z)

    def _resolve_probe(self, probe: int | None) -> int:
        p = self.default_probe() if probe is None else int(probe)
        if p < 1:
            raise ValueError("probe must be at least 1")
        return min(p, self.lists)

    def adc_labels(
        self, z_e: np.ndarray, k: int, probe: int | None = None, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Squared latent distances [Q, k] (ascending) and labels [Q, k] (-1 / inf past the hits)
        over the ``probe`` nearest lists; ``rows``: only these rows count (a filter's matches)."""
        z = self._check_latent(z_e)
        if k < 1:
            raise ValueError("k must be at least 1")
        p = self._resolve_probe(probe)
        q = len(z)
        if q == 0 or self._n == 0:
            return np.full((q, k), np.inf, np.float32), np.full((q, k), -1, np.int64)
        if rows is not None:
            return self._adc_subset(z, k, p, np.asarray(rows, dtype=np.int64))
        coarse_dist, lists = self._probe_lists(z, p)
        self._ivf.nprobe = p
        dist, labels = self._ivf.search_preassigned(z, k, lists, coarse_dist)
        dist = np.where(labels >= 0, dist, np.inf).astype(np.float32)
        return dist, labels

    def tables(self, z: np.ndarray) -> np.ndarray:
        """The queries' ADC look-up tables [Q, H, 256] (faiss's, on faiss's threads, not BLAS's)."""
        out = np.empty((len(z), self.num_heads, MAX_CODES), dtype=np.float32)
        self._flat_pq.compute_distance_tables(len(z), faiss.swig_ptr(np.ascontiguousarray(z)), faiss.swig_ptr(out))
        return out

    def _probe_lists(self, z: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``probe`` lists nearest each query (coarse distances, list numbers): the query's
        ADC tables summed over each centroid's codes (4 look-ups a list), or the multi-index's
        best code pairs."""
        tables = self.tables(z)
        if self._imi is not None:
            return self._imi.probe(tables, probe)
        cent = self._centroids if self._centroids is not None else np.zeros((1, self.num_heads), np.uint8)
        d = tables[:, 0][:, cent[:, 0]]
        for j in range(1, self.num_heads):
            d += tables[:, j][:, cent[:, j]]
        if probe < d.shape[1]:
            idx = np.argpartition(d, probe - 1, axis=1)[:, :probe]
        else:
            idx = np.broadcast_to(np.arange(d.shape[1]), d.shape)
        return np.ascontiguousarray(np.take_along_axis(d, idx, 1), np.float32), np.ascontiguousarray(idx, np.int64)

    def _adc_subset(self, z: np.ndarray, k: int, probe: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered search: the probed lists' entries whose rows are in ``rows``, scored by the same
        ADC (faiss's PQ scanner over the gathered codes). Where the probed lists hold fewer than k
        matches every list is scanned, so k hits come back whenever k items match."""
        allowed = np.zeros(self._n, dtype=bool)
        allowed[self._rows(rows)] = True
        _, probed = self._probe_lists(z, probe)
        dist = np.full((len(z), k), np.inf, np.float32)
        out = np.full((len(z), k), -1, np.int64)
        everything: np.ndarray | None = None
        for i in range(len(z)):
            lists = [int(x) for x in probed[i] if x >= 0]
            labels = np.concatenate([self._ids(lst) for lst in lists]) if lists else np.zeros(0, np.int64)
            labels = labels[allowed[labels >> ROW_SHIFT]]
            if len(labels) < k and probe < self.lists:
                if everything is None:
                    everything = self.labels()
                    everything = everything[allowed[everything >> ROW_SHIFT]]
                labels = everything
            kk = min(k, len(labels))
            if kk == 0:
                continue
            codes = np.ascontiguousarray(unpack_codes(labels, self.num_heads))
            d = np.empty((1, kk), dtype=np.float32)
            j = np.empty((1, kk), dtype=np.int64)
            heap = faiss.float_maxheap_array_t()
            heap.nh, heap.k = 1, kk
            heap.val, heap.ids = faiss.swig_ptr(d), faiss.swig_ptr(j)
            self._flat_pq.search(faiss.swig_ptr(z[i : i + 1]), 1, faiss.swig_ptr(codes), len(codes), heap, True)
            dist[i, :kk], out[i, :kk] = d[0], labels[j[0]]
        return dist, out

    def search(
        self,
        z_e: np.ndarray,
        k: int = 10,
        candidates: int = 0,
        queries: np.ndarray | None = None,
        decoder: Decoder | None = None,
        backend: str | None = None,
        rows: np.ndarray | None = None,
        probe: int | None = None,
    ) -> SearchResult:
        """Top-k rows per query, as :meth:`vqvae.search.CodeIndex.search` (same scores), over the
        ``probe`` nearest lists (default :meth:`default_probe`)."""
        del backend
        if candidates < 0:
            raise ValueError("candidates must be ≥ 0")
        if candidates == 0:
            dist, labels = self.adc_labels(z_e, k, probe, rows)
            return SearchResult(rows=self._to_rows(labels), metric=self.metric,
                                scores=adc_scores(dist, labels, self.metric, self.num_heads))
        x = rerank_queries(z_e, queries, decoder)
        _, cand = self.adc_labels(z_e, max(candidates, k), probe, rows)

        def reconstruct(labels: np.ndarray) -> np.ndarray:
            words = labels & CODE_MASK
            uniq, inverse = np.unique(words, return_inverse=True)  # each distinct code decoded once
            return np.asarray(decoder(unpack_codes(uniq, self.num_heads).astype(np.int64)),
                              dtype=np.float32)[inverse.reshape(-1)]

        res = rerank_by_cosine(x, cand, k, reconstruct)
        return SearchResult(rows=self._to_rows(res.rows), scores=res.scores, metric=res.metric)

    @staticmethod
    def _to_rows(labels: np.ndarray) -> np.ndarray:
        return np.where(labels >= 0, labels >> ROW_SHIFT, -1).astype(np.int64)
