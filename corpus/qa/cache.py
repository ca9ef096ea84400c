"""On-disk response cache for generator backends: a rebuild with unchanged inputs makes no backend calls.

Key = sha256 of (model_id, the backend's generation settings, task, prompt, sha256 of the image bytes, box,
locked). One sqlite3 file (`responses.sqlite` in `cache_dir`) in WAL mode: atomic writes, readable by other
processes (parallel corpus workers) while one writes, and no half-written entry after a crash.

* Failures (None) are never stored, so a rebuild retries them.
* Only accepted replies are stored: `generate(reqs, accept=...)` takes the caller's verdict (the QA text stage
  passes its verifier), so a reply the verifier rejects is asked for again on the next build instead of being
  served forever once the server is fixed. The verdict is also applied to stored replies: an entry the current
  verifier rejects (stored by an older, laxer version) is a miss and is replaced. `accept=None` stores every
  reply (callers that verify nothing).
* Thread safe: one connection guarded by a lock; and concurrent `generate` calls that miss on the SAME key
  make one backend call between them (the others wait for its result), so a key is paid for once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from medlvr.corpus.qa.requests import Backend, GenRequest, stable_hash

SCHEMA_VERSION = 1


def request_key(model_id: str, req: GenRequest, params: str = "") -> str:
    image_hash = hashlib.sha256(req.image_png).hexdigest() if req.image_png is not None else None
    return stable_hash(SCHEMA_VERSION, model_id, params, req.task, req.prompt, image_hash, req.box, req.locked)


class _InFlight:
    """A key some thread is generating right now; waiters read `.value` after `.done` is set."""

    def __init__(self):
        self.done = threading.Event()
        self.value: str | None = None


class CachedBackend:
    def __init__(self, backend: Backend, cache_dir: str | Path):
        self.backend = backend
        self.model_id = backend.model_id
        self.params = getattr(backend, "cache_params", "")
        self.path = Path(cache_dir) / "responses.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards the connection, the counters and the in-flight table
        # check_same_thread=False: the lock above serialises use; timeout covers another process writing
        self._db = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable against process crashes
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model_id TEXT NOT NULL, "
            "task TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL DEFAULT (julianday('now')))"
        )
        self._inflight: dict[str, _InFlight] = {}
        # misses: requests sent to the backend; hits: all others (stored, duplicate in the call, or generated
        # by a concurrent call)
        self.hits = 0
        self.misses = 0
        self.failures = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "failures": self.failures}

    def key(self, req: GenRequest) -> str:
        return request_key(self.model_id, req, self.params)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -----------------------------------------------------------------------------------------------------------

    def generate(self, reqs: list[GenRequest],
                 accept: Callable[[int, str], bool] | None = None) -> list[str | None]:
        """One text (or None) per request. `accept(i, text)` is the verdict on a reply to `reqs[i]`: rejected
        replies are returned (the caller counts them) but never stored, and a rejected stored reply is asked again."""
        keys = [self.key(r) for r in reqs]
        out: list[str | None] = [None] * len(reqs)
        mine: dict[str, list[int]] = {}  # keys this call must generate -> positions in reqs
        waits: dict[str, tuple[_InFlight, list[int]]] = {}  # keys another thread is generating
        with self._lock:
            for i, k in enumerate(keys):
                if k in mine:  # duplicate within this call: generated once
                    self.hits += 1
                    mine[k].append(i)
                    continue
                if k in waits:
                    self.hits += 1
                    waits[k][1].append(i)
                    continue
                row = self._db.execute("SELECT text FROM responses WHERE key = ?", (k,)).fetchone()
                if row is not None and accept is not None and not accept(i, row[0]):
                    row = None  # stored before this verifier: ask again (the new reply replaces it if accepted)
                if row is not None:
                    self.hits += 1
                    out[i] = row[0]
                elif k in self._inflight:  # another thread is paying for this key: wait for its result
                    self.hits += 1
                    waits[k] = (self._inflight[k], [i])
                else:
                    self.misses += 1
                    self._inflight[k] = _InFlight()
                    mine[k] = [i]
        todo = list(mine)
        try:
            texts = self.backend.generate([reqs[mine[k][0]] for k in todo]) if todo else []
            if len(texts) != len(todo):
                raise RuntimeError(f"backend returned {len(texts)} results for {len(todo)} requests")
        except BaseException:
            # release waiters (they see None, i.e. a failure) before propagating
            self._finish({k: None for k in todo}, set())
            raise
        keep = {k for k, t in zip(todo, texts) if t is not None and (accept is None or accept(mine[k][0], t))}
        self._finish(dict(zip(todo, texts)), keep, reqs=reqs, positions=mine)
        for k, t in zip(todo, texts):
            for i in mine[k]:
                out[i] = t
        for k, (flight, positions) in waits.items():
            flight.done.wait()
            for i in positions:
                out[i] = flight.value
        return out

    def _finish(self, results: dict[str, str | None], keep: set[str], reqs=None, positions=None) -> None:
        """Stores the results whose key is in `keep` and hands every result to the threads waiting on its key."""
        with self._lock:
            try:
                rows = []
                for k, text in results.items():
                    if text is None:
                        self.failures += 1  # never stored: the next build asks again
                    elif k in keep and reqs is not None:
                        req = reqs[positions[k][0]]
                        rows.append((k, self.model_id, req.task, text))
                if rows:
                    # one transaction per batch: fewer fsyncs than one per row
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(
                            "INSERT OR REPLACE INTO responses (key, model_id, task, text) VALUES (?, ?, ?, ?)", rows
                        )
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
            finally:
                # waiters must never hang, even if the write failed: hand them the results we have
                for k, text in results.items():
                    flight = self._inflight.pop(k, None)
                    if flight is not None:
                        flight.value = text
                        flight.done.set()
