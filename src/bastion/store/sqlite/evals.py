"""Eval results in SQLite: runs, their rows, and the judge-verdict cache.

A file of its own (``evals.db`` in the data directory, or any path given to
``bastion eval run --results``), separate from the gateway's ``bastion.db``:
results are local working data, kept wherever the evals run. WAL mode, so a
report can read a run that is still being written. The schema is created on
open (``CREATE ... IF NOT EXISTS``) and versioned with ``user_version``.

:class:`SqliteResultStore` implements :class:`bastion.evals.ports.ResultStore`
and :class:`bastion.evals.ports.JudgeCache`. Rows are streamed back through a
separate read connection, in (case id, repetition) order, so a million-row
run is never loaded whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bastion.core.errors import InvalidRequest
from bastion.evals.ports import CaseRow, RunInfo
from bastion.evals.types import Score
from bastion.store.sqlite import db as sqlite_db

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    target TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_suite ON runs(suite, started_at);
CREATE TABLE IF NOT EXISTS rows (
    run_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    input TEXT NOT NULL,
    expected TEXT,
    output TEXT NOT NULL,
    scores TEXT NOT NULL,
    latency_s REAL NOT NULL,
    cost_usd REAL,
    error TEXT,
    metadata TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id, repetition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS judge_cache (
    key TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
_RUN_COLS = "id, suite, target, started_at, finished_at, status, config, summary"
_ROW_COLS = (
    "run_id, case_id, repetition, input, expected, output, scores, latency_s, cost_usd, "
    "error, metadata"
)
LATEST = "@latest"


def _dumps(v: Any) -> str:
    return orjson.dumps(v, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def score_json(s: Score) -> dict[str, Any]:
    """A score with every field (errors and details included)."""
    return asdict(s)


def score_of(d: dict[str, Any]) -> Score:
    return Score(
        scorer=d["scorer"],
        value=d.get("value"),
        passed=d.get("passed"),
        explanation=d.get("explanation"),
        error=d.get("error"),
        details=d.get("details") or {},
    )


def _run(r: Sequence[Any]) -> RunInfo:
    return RunInfo(
        id=r[0],
        suite=r[1],
        target=r[2],
        started_at=r[3],
        finished_at=r[4],
        status=r[5],
        config=orjson.loads(r[6]),
        summary=orjson.loads(r[7]),
    )


def _row(r: Sequence[Any]) -> CaseRow:
    return CaseRow(
        run_id=r[0],
        case_id=r[1],
        repetition=r[2],
        input=r[3],
        expected=orjson.loads(r[4]) if r[4] is not None else None,
        output=r[5],
        scores=tuple(score_of(d) for d in orjson.loads(r[6])),
        latency_s=r[7],
        cost_usd=r[8],
        error=r[9],
        metadata=orjson.loads(r[10]),
    )


class SqliteResultStore:
    """Runs, rows and judge verdicts in one SQLite file (created on first open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite_db.connect(self.path, timeout=30)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise InvalidRequest(
                f"{self.path}: eval results schema {version} is newer than this Bastion "
                f"({SCHEMA_VERSION}); upgrade Bastion"
            )
        self._db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")

    # ------------------------------------------------------------------ runs
    def create_run(self, info: RunInfo) -> None:
        """Insert a run; an existing id (a resumed run) goes back to ``running``."""
        with self._lock:
            self._db.execute(
                f"INSERT INTO runs ({_RUN_COLS}) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
                "finished_at = excluded.finished_at, target = excluded.target",
                (
                    info.id,
                    info.suite,
                    info.target,
                    info.started_at,
                    info.finished_at,
                    info.status,
                    _dumps(info.config),
                    _dumps(info.summary),
                ),
            )

    def finish_run(
        self, run_id: str, status: str, summary: dict[str, Any], finished_at: float
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status = ?, summary = ?, finished_at = ? WHERE id = ?",
                (status, _dumps(summary), finished_at, run_id),
            )

    def get_run(self, run_id: str) -> RunInfo | None:
        """A run by id, unique id prefix, or ``SUITE@latest`` (None when none matches).

        Raises :class:`InvalidRequest` for a prefix that matches several runs.
        """
        with self._lock:
            if run_id.endswith(LATEST):
                r = self._db.execute(
                    f"SELECT {_RUN_COLS} FROM runs WHERE suite = ? "
                    "ORDER BY started_at DESC, rowid DESC LIMIT 1",
                    (run_id[: -len(LATEST)],),
                ).fetchone()
                return _run(r) if r else None
            r = self._db.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if r is not None or not run_id:
                return _run(r) if r else None
            found = self._db.execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE substr(id, 1, ?) = ? LIMIT 2",
                (len(run_id), run_id),
            ).fetchall()
        if len(found) > 1:
            raise InvalidRequest(f"run id prefix {run_id!r} matches several runs; give more of it")
        return _run(found[0]) if found else None

    def list_runs(self, suite: str | None = None, limit: int = 50) -> list[RunInfo]:
        """Runs, newest first (only ``suite``'s when given)."""
        where, params = ("WHERE suite = ?", [suite]) if suite else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RUN_COLS} FROM runs {where} ORDER BY started_at DESC, rowid DESC "
                "LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [_run(r) for r in rows]

    # ------------------------------------------------------------------ rows
    def add_rows(self, rows: Sequence[CaseRow]) -> None:
        if not rows:
            return
        values = [
            (
                r.run_id,
                r.case_id,
                r.repetition,
                r.input,
                None if r.expected is None else _dumps(r.expected),
                r.output,
                _dumps([score_json(s) for s in r.scores]),
                r.latency_s,
                r.cost_usd,
                r.error,
                _dumps(r.metadata),
            )
            for r in rows
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO rows ({_ROW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    values,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def done_keys(self, run_id: str) -> set[tuple[str, int]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT case_id, repetition FROM rows WHERE run_id = ?", (run_id,)
            )
            return {(c, int(rep)) for c, rep in cur}

    def count_rows(self, run_id: str) -> int:
        with self._lock:
            n = self._db.execute("SELECT count(*) FROM rows WHERE run_id = ?", (run_id,))
            return int(n.fetchone()[0])

    def rows(self, run_id: str) -> Iterator[CaseRow]:
        """The run's rows in (case id, repetition) order, read in pages of 500."""
        conn = sqlite_db.connect(self.path, timeout=30)
        try:
            cur = conn.execute(
                f"SELECT {_ROW_COLS} FROM rows WHERE run_id = ? ORDER BY case_id, repetition",
                (run_id,),
            )
            while page := cur.fetchmany(500):
                for r in page:
                    yield _row(r)
        finally:
            conn.close()

    # ------------------------------------------------------------------ judge cache
    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute("SELECT verdict FROM judge_cache WHERE key = ?", (key,)).fetchone()
        if r is None:
            return None
        out: dict[str, Any] = orjson.loads(r[0])
        return out

    def put(self, key: str, verdict: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judge_cache (key, verdict, created_at) VALUES (?,?,?)",
                (key, _dumps(verdict), time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
