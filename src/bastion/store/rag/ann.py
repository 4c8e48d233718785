"""Approximate vector search for big embedded collections: a filtered HNSW graph.

Exact search reads every vector of a collection on every query (100k chunks
x 384 float32 = 150 MB, about 15 to 30 ms on two cores). Above
:data:`ANN_MIN_ROWS` live chunks the embedded store also keeps a faiss
``IndexHNSWFlat`` (inner product on unit vectors) whose ids are the index's
row numbers, and searches it with the caller's candidate mask (ACL, filters,
tombstones) as a bitmap :class:`faiss.IDSelectorBitmap`, so the ACL is
applied inside the graph walk, never to results after the fact.

The graph is built in a background thread from a snapshot of the vectors;
until it is ready, and whenever the candidate set is small (at most
:data:`EXACT_MAX_CANDIDATES` rows, where an exact scan is as fast and a
filtered graph walk would need a very wide beam), search stays exact. Rows
added later are inserted into the graph as they come; a compaction (which
renumbers rows) drops the graph and starts a new build.

faiss comes with the ``rag`` extra (``faiss-cpu``); without it, search is
always exact.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger("bastion.rag.ann")

ANN_MIN_ROWS = 30_000
"""Live chunks from which a collection gets an HNSW graph."""
EXACT_MAX_CANDIDATES = 20_000
"""Candidate sets this small are searched exactly even when a graph exists."""
HNSW_M = 32
EF_CONSTRUCTION = 64
EF_SEARCH_MIN = 128
EF_SEARCH_MAX = 1024


def available() -> bool:
    """Whether faiss is installed (the ``rag`` extra)."""
    return importlib.util.find_spec("faiss") is not None


class HnswGraph:
    """One collection's graph: rows ``0 .. size-1`` of its vector matrix."""

    def __init__(self, dimensions: int) -> None:
        import faiss

        self._faiss: Any = faiss
        self.index: Any = faiss.IndexHNSWFlat(dimensions, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: NDArray[np.float32]) -> None:
        """Append rows (their ids are the next row numbers)."""
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(
        self, query: NDArray[np.float32], mask: NDArray[np.bool_], limit: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Best ``limit`` rows among ``mask`` (a bool per row, ``len(mask) == size``).

        The beam widens as the mask gets more selective, so a filter that
        keeps a tenth of the rows still finds ``limit`` results.
        """
        faiss = self._faiss
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        share = max(float(mask.sum()) / max(len(mask), 1), 1e-3)
        ef = int(min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, 2 * limit) / min(1.0, share * 2)))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores, rows = self.index.search(q, limit, params=params)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep].astype(np.int64)


class GraphBuilder:
    """Builds a graph off the caller's thread and hands it over when done.

    ``snapshot`` is called (inside the caller's ``exclusive`` context) to copy the vectors to
    index, with a generation number (None: no graph is needed any more);
    ``install`` is called with the finished graph and that generation, again
    inside ``exclusive``, and rejects it (returns False) when the rows
    were renumbered meanwhile, in which case the build starts over.
    """

    def __init__(
        self,
        dimensions: int,
        exclusive: Callable[[], AbstractContextManager[object]],
        snapshot: Callable[[], tuple[int, NDArray[np.float32]] | None],
        install: Callable[[HnswGraph, int], bool],
    ) -> None:
        self._dimensions = dimensions
        self._exclusive = exclusive
        self._snapshot = snapshot
        self._install = install
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self.done.clear()
        self._thread = threading.Thread(target=self._run, name="bastion-hnsw", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._exclusive():
                    snap = self._snapshot()
                if snap is None:
                    return
                generation, vectors = snap
                t0 = time.perf_counter()
                graph = HnswGraph(self._dimensions)
                graph.add(vectors)
                del vectors
                with self._exclusive():
                    installed = self._install(graph, generation)
                log.info(
                    "hnsw graph built",
                    extra={"rows": graph.size, "seconds": round(time.perf_counter() - t0, 2)},
                )
                if installed:
                    return
        except Exception:  # the store keeps searching exactly
            log.exception("hnsw graph build failed")
        finally:
            self.done.set()
