"""In-memory search structures of one collection (the embedded backend's indexes).

:class:`CollectionIndex` holds, for every live chunk, its row number, its
document, its BM25 length and its unit vector (a growing float32 matrix), and
an inverted index ``term -> (rows, term counts)``. The bulk of the postings
sits in sorted numpy arrays built at load; chunks added later go to a small
delta that is folded in when it grows; removed chunks are tombstoned and the
whole index is compacted when a third of it is dead.

Every search first builds the *candidate mask* (live, visible to the caller's
ACL, passing the filters), then scores only those rows: BM25 statistics (N,
average length, document frequencies) come from the candidates alone, so a
caller's scores do not depend on documents it cannot see.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from numpy.typing import NDArray

from bastion.rag.ports import BM25_B, BM25_K1, Access, Acl, Filters, Hit, Vector
from bastion.store.rag import ann

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(slots=True)
class DocInfo:
    """What the masks need of a document."""

    id: str
    acl: Acl
    metadata: dict[str, object]
    updated_at: float
    rows: list[int] = field(default_factory=list)


@dataclass(slots=True)
class IndexedChunk:
    """One chunk as the index takes it."""

    id: str
    document_id: str
    terms: Mapping[str, int]
    embedding: Vector


class CollectionIndex:
    """BM25 and exact inner-product search over one collection's chunks.

    Searches only read, so several may run at once; changes must not overlap
    a search: the embedded store guarantees that, and ``exclusive`` is its
    context for the background graph builder (:mod:`.ann`) to take before it
    snapshots or installs a graph.
    ``ann_min_rows`` is the live-chunk count from which a graph is built
    (None: never); searches over more than ``exact_max`` candidates use it.
    """

    def __init__(
        self,
        dimensions: int,
        exclusive: Callable[[], AbstractContextManager[object]] | None = None,
        ann_min_rows: int | None = ann.ANN_MIN_ROWS,
        exact_max: int = ann.EXACT_MAX_CANDIDATES,
    ) -> None:
        self.dimensions = dimensions
        own = threading.RLock()
        self._exclusive = exclusive or (lambda: own)
        self._ann_min_rows = ann_min_rows if ann.available() else None
        self._exact_max = exact_max
        self._graph: ann.HnswGraph | None = None
        self._generation = 0  # bumped when rows are renumbered
        self._builder: ann.GraphBuilder | None = None
        self._ids: list[str] = []
        self._doc_of = np.zeros(0, dtype=np.int64)  # row -> document slot
        self._lengths = np.zeros(0, dtype=np.float64)
        self._alive = np.zeros(0, dtype=bool)
        self._vectors = np.zeros((0, dimensions), dtype=np.float32)
        self._size = 0
        self._docs: list[DocInfo | None] = []
        self._doc_slot: dict[str, int] = {}
        # postings: base (sorted arrays) + delta (recent additions)
        self._terms: dict[str, tuple[int, int]] = {}  # term -> slice of base arrays
        self._base_rows = np.zeros(0, dtype=np.int64)
        self._base_tfs = np.zeros(0, dtype=np.float64)
        self._delta: dict[str, list[tuple[int, int]]] = {}
        self._delta_size = 0
        self._dead = 0
        self._acl_groups: dict[Acl, int] = {}
        self._doc_group: list[int] = []  # document slot -> ACL group
        self._doc_group_arr: IntArray | None = None
        self._row_of: dict[str, int] | None = None  # chunk id -> row, built on demand
        self.seq = 0
        """The last change-log entry applied (maintained by the store)."""

    # ---- writes -------------------------------------------------------------

    def put(
        self,
        doc_id: str,
        acl: Acl,
        metadata: dict[str, object],
        updated_at: float,
        chunks: Sequence[IndexedChunk],
    ) -> None:
        """Add or replace a document with its chunks."""
        self.remove([doc_id])
        info = DocInfo(doc_id, acl, metadata, updated_at)
        self._append(info, chunks)
        for row, chunk in zip(info.rows, chunks, strict=True):
            for term, tf in chunk.terms.items():
                self._delta.setdefault(term, []).append((row, tf))
                self._delta_size += 1
        if self._delta_size > max(50_000, len(self._base_rows) // 4):
            self._fold()

    def _append(self, info: DocInfo, chunks: Sequence[IndexedChunk]) -> None:
        """A new document slot and a row per chunk (postings are the caller's)."""
        slot = len(self._docs)
        info.rows = []
        self._docs.append(info)
        self._doc_slot[info.id] = slot
        self._doc_group.append(self._acl_groups.setdefault(info.acl, len(self._acl_groups)))
        self._doc_group_arr = None
        self._row_of = None
        self._reserve(self._size + len(chunks))
        for chunk in chunks:
            row = self._size
            self._size += 1
            self._ids.append(chunk.id)
            self._doc_of[row] = slot
            self._lengths[row] = float(sum(chunk.terms.values()))
            self._alive[row] = True
            self._vectors[row] = chunk.embedding
            info.rows.append(row)
        if self._graph is not None:
            self._graph.add(self._vectors[self._graph.size : self._size])

    def load(self, docs: Iterable[tuple[DocInfo, Sequence[IndexedChunk]]]) -> None:
        """Fill an empty index in one pass: postings go straight into sorted arrays.

        The postings are gathered with C-level iterators (no Python loop per
        term): 100k chunks of ~150 terms load in seconds, not tens of seconds.
        """
        first = self._size
        bags: list[Mapping[str, int]] = []
        for info, chunks in docs:
            self._append(info, chunks)
            bags.extend(chunk.terms for chunk in chunks)
        lengths = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))
        total = int(lengths.sum())
        term_ids = {term: i for i, term in enumerate(dict.fromkeys(chain.from_iterable(bags)))}
        terms = np.fromiter(
            map(term_ids.__getitem__, chain.from_iterable(bags)), dtype=np.int64, count=total
        )
        tfs = np.fromiter(
            chain.from_iterable(bag.values() for bag in bags), dtype=np.float64, count=total
        )
        rows = np.repeat(np.arange(first, first + len(bags), dtype=np.int64), lengths)
        # numpy's stable sort is a radix sort on 16-bit keys: use it when the vocabulary fits
        keys = terms.astype(np.uint16) if len(term_ids) <= 1 << 16 else terms
        order = np.argsort(keys, kind="stable")
        self._base_rows = rows[order]
        self._base_tfs = tfs[order]
        sorted_terms = terms[order]
        ids = np.arange(len(term_ids))
        starts = np.searchsorted(sorted_terms, ids, side="left")
        ends = np.searchsorted(sorted_terms, ids, side="right")
        self._terms = {term: (int(starts[tid]), int(ends[tid])) for term, tid in term_ids.items()}
        self._maybe_build()

    def remove(self, doc_ids: Iterable[str]) -> None:
        self._row_of = None
        for doc_id in doc_ids:
            slot = self._doc_slot.pop(doc_id, None)
            if slot is None:
                continue
            info = self._docs[slot]
            assert info is not None
            self._alive[info.rows] = False
            self._dead += len(info.rows)
            self._docs[slot] = None
        if self._size and self._dead > self._size // 3:
            self._compact()

    def _reserve(self, n: int) -> None:
        if n <= len(self._alive):
            return
        cap = max(n, 2 * len(self._alive), 1024)
        lengths = np.zeros(cap, dtype=np.float64)
        lengths[: self._size] = self._lengths[: self._size]
        alive = np.zeros(cap, dtype=bool)
        alive[: self._size] = self._alive[: self._size]
        vectors = np.zeros((cap, self.dimensions), dtype=np.float32)
        vectors[: self._size] = self._vectors[: self._size]
        doc_of = np.zeros(cap, dtype=np.int64)
        doc_of[: self._size] = self._doc_of[: self._size]
        self._lengths, self._alive, self._vectors = lengths, alive, vectors
        self._doc_of = doc_of

    def _postings_items(self) -> Iterable[tuple[str, IntArray, FloatArray]]:
        for term, (lo, hi) in self._terms.items():
            yield term, self._base_rows[lo:hi], self._base_tfs[lo:hi]
        for term, pairs in self._delta.items():
            arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            yield term, arr[:, 0], arr[:, 1].astype(np.float64)

    def _rebuild_postings(self, remap: IntArray | None) -> None:
        """Merge base and delta into sorted arrays; ``remap`` renumbers rows (-1: drop)."""
        rows_by_term: dict[str, list[IntArray]] = {}
        tfs_by_term: dict[str, list[FloatArray]] = {}
        for term, rows, tfs in self._postings_items():
            if remap is not None:
                new = remap[rows]
                keep = new >= 0
                rows, tfs = new[keep], tfs[keep]
            if len(rows):
                rows_by_term.setdefault(term, []).append(rows)
                tfs_by_term.setdefault(term, []).append(tfs)
        self._terms = {}
        all_rows: list[IntArray] = []
        all_tfs: list[FloatArray] = []
        pos = 0
        for term, parts in rows_by_term.items():
            rows = np.concatenate(parts)
            n = len(rows)
            self._terms[term] = (pos, pos + n)
            all_rows.append(rows)
            all_tfs.append(np.concatenate(tfs_by_term[term]))
            pos += n
        self._base_rows = np.concatenate(all_rows) if all_rows else np.zeros(0, dtype=np.int64)
        self._base_tfs = np.concatenate(all_tfs) if all_tfs else np.zeros(0, dtype=np.float64)
        self._delta = {}
        self._delta_size = 0

    def _fold(self) -> None:
        self._rebuild_postings(None)

    def fold(self) -> None:
        """Merge recent additions into the sorted postings (after a bulk load)."""
        if self._delta:
            self._fold()

    def _compact(self) -> None:
        """Drop dead rows and documents, renumbering everything."""
        keep = np.flatnonzero(self._alive[: self._size])
        remap = np.full(self._size, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        self._rebuild_postings(remap)
        docs: list[DocInfo | None] = []
        groups: list[int] = []
        self._doc_slot = {}
        slot_map: dict[int, int] = {}
        for old_slot, info in enumerate(self._docs):
            if info is None:
                continue
            slot_map[old_slot] = len(docs)
            self._doc_slot[info.id] = len(docs)
            info.rows = [int(remap[r]) for r in info.rows]
            docs.append(info)
            groups.append(self._doc_group[old_slot])
        slots = np.full(len(self._docs), -1, dtype=np.int64)
        for old_slot, new_slot in slot_map.items():
            slots[old_slot] = new_slot
        self._ids = [self._ids[i] for i in keep]
        self._doc_of = slots[self._doc_of[keep]]
        self._lengths = self._lengths[keep].copy()
        self._alive = np.ones(len(keep), dtype=bool)
        self._vectors = self._vectors[keep].copy()
        self._size = len(keep)
        self._docs = docs
        self._doc_group = groups
        self._doc_group_arr = None
        self._dead = 0
        self._graph = None  # row numbers changed: the graph is rebuilt
        self._generation += 1
        self._maybe_build()

    # ---- the approximate graph ---------------------------------------------

    def _maybe_build(self) -> None:
        """Start a background graph build when the collection is big enough."""
        if self._ann_min_rows is None or self._graph is not None:
            return
        if self.live_chunks < self._ann_min_rows:
            return
        if self._builder is None:
            self._builder = ann.GraphBuilder(
                self.dimensions, self._exclusive, self._snapshot, self._install
            )
        self._builder.start()

    def _snapshot(self) -> tuple[int, NDArray[np.float32]] | None:
        if self._graph is not None or self._ann_min_rows is None:
            return None
        if self.live_chunks < self._ann_min_rows:
            return None
        return self._generation, self._vectors[: self._size].copy()

    def _install(self, graph: ann.HnswGraph, generation: int) -> bool:
        if generation != self._generation:
            return False  # rows were renumbered during the build: the builder retries
        graph.add(self._vectors[graph.size : self._size])  # rows added during the build
        self._graph = graph
        return True

    def wait_for_graph(self, timeout: float | None = None) -> bool:
        """Block until a running graph build ends; True when a graph is in use."""
        if self._builder is not None:
            self._builder.done.wait(timeout)
        return self._graph is not None

    # ---- reads --------------------------------------------------------------

    @property
    def live_chunks(self) -> int:
        return self._size - self._dead

    def candidates(self, access: Access, filters: Filters) -> NDArray[np.bool_]:
        """Rows the caller may see that pass the filters (over ``[0, size)``)."""
        allowed = np.zeros(len(self._acl_groups), dtype=bool)
        for acl, group in self._acl_groups.items():
            allowed[group] = acl.allows(access)
        if self._doc_group_arr is None:
            self._doc_group_arr = np.asarray(self._doc_group, dtype=np.int64)
        doc_ok = allowed[self._doc_group_arr] if self._doc_group else np.zeros(0, dtype=bool)
        if filters.metadata or filters.document_ids is not None or filters.updated_after:
            extra = np.fromiter(
                (
                    info is not None and filters.matches(info.metadata, info.updated_at, info.id)
                    for info in self._docs
                ),
                dtype=bool,
                count=len(self._docs),
            )
            doc_ok = doc_ok & extra
        mask: NDArray[np.bool_] = self._alive[: self._size] & doc_ok[self._doc_of[: self._size]]
        return mask

    def _postings(self, term: str) -> tuple[IntArray, FloatArray]:
        parts_r: list[IntArray] = []
        parts_t: list[FloatArray] = []
        span = self._terms.get(term)
        if span is not None:
            parts_r.append(self._base_rows[span[0] : span[1]])
            parts_t.append(self._base_tfs[span[0] : span[1]])
        pairs = self._delta.get(term)
        if pairs:
            arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            parts_r.append(arr[:, 0])
            parts_t.append(arr[:, 1].astype(np.float64))
        if not parts_r:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        if len(parts_r) == 1:
            return parts_r[0], parts_t[0]
        return np.concatenate(parts_r), np.concatenate(parts_t)

    def search_text(
        self, terms: Mapping[str, float], access: Access, filters: Filters, limit: int
    ) -> list[Hit]:
        mask = self.candidates(access, filters)
        n = int(mask.sum())
        if n == 0 or limit <= 0:
            return []
        lengths = self._lengths[: self._size]
        avgdl = float(lengths[mask].mean()) or 1.0
        # the length normalisation of every row once, rather than per posting
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * lengths / avgdl)
        scores = np.zeros(self._size, dtype=np.float64)
        for term, qtf in terms.items():
            rows, tfs = self._postings(term)
            if not len(rows):
                continue
            keep = mask[rows]
            rows = rows[keep]
            df = len(rows)
            if df == 0:
                continue
            tfs = tfs[keep]
            idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
            scores[rows] += (qtf * idf * (BM25_K1 + 1.0)) * tfs / (tfs + norm[rows])
        # every term's contribution is positive (idf > 0, tf > 0): scored rows are non-zero
        return self._top(scores, np.flatnonzero(scores), limit)

    def vectors(self, ids: Sequence[str], access: Access) -> dict[str, Vector]:
        """Stored vectors of the given live chunks the caller may see."""
        if self._row_of is None:
            self._row_of = {cid: r for r, cid in enumerate(self._ids) if self._alive[r]}
        mask = self.candidates(access, Filters())
        out: dict[str, Vector] = {}
        for cid in ids:
            r = self._row_of.get(cid)
            if r is not None and mask[r]:
                out[cid] = self._vectors[r].copy()
        return out

    def search_vector(
        self, vector: Vector, access: Access, filters: Filters, limit: int
    ) -> list[Hit]:
        mask = self.candidates(access, filters)
        rows = np.flatnonzero(mask)
        if not len(rows) or limit <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        if self._graph is not None and len(rows) > self._exact_max:
            found, picked = self._graph.search(q, mask[: self._graph.size], limit)
            if len(picked) >= min(limit, len(rows)):
                ranked = sorted(
                    (-float(v), self._ids[int(r)]) for v, r in zip(found, picked, strict=True)
                )
                return [Hit(chunk_id, -neg) for neg, chunk_id in ranked]
        # One matrix-vector product over every row beats gathering the visible
        # rows first (a copy of most of the matrix); invisible rows are never
        # candidates of _top, whatever their product.
        scores = (self._vectors[: self._size] @ q).astype(np.float64)
        return self._top(scores, rows, limit)

    def _top(self, scores: FloatArray, rows: IntArray, limit: int) -> list[Hit]:
        """Best ``limit`` of ``rows`` by score, ties by chunk id (exact at the cut)."""
        if not len(rows):
            return []
        sub = scores[rows]
        if len(rows) > limit:
            kth = np.partition(sub, len(sub) - limit)[len(sub) - limit]
            pick = rows[sub >= kth]
        else:
            pick = rows
        ranked = sorted((-float(scores[r]), self._ids[r]) for r in pick)[:limit]
        return [Hit(chunk_id, -neg) for neg, chunk_id in ranked]
