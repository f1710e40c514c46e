"""A content-addressed cache of derivation replies, in SQLite.

The key is a hash of everything that determines a reply: backend, model, template version,
generation parameters and the messages sent (which hold the input text). A re-run, a run
after a crash or after partial failures therefore sends only requests whose key is absent;
changing a template's version or a generation parameter makes new keys and leaves the old
replies in place. Each reply is committed as soon as it arrives.

API keys never reach this file: they are not part of a request.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from ptft.derive.backend import Reply

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    template_version TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def request_key(backend: str, model: str, template_version: str, params: dict, messages) -> str:
    """sha256 of the canonical JSON of what determines a reply."""
    payload = {
        "backend": backend,
        "model": model,
        "template_version": template_version,
        "params": params,
        "messages": list(messages),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection, used from one thread; WAL lets a reader (a test, a progress check)
        # look while the derivation writes.
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get_many(self, keys) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM replies WHERE key IN ({','.join('?' * len(chunk))})",  # noqa: E501
                chunk,
            )
            out.update({k: Reply(t, p, c) for k, t, p, c in rows})
        return out

    def put(self, key: str, backend: str, model: str, template_version: str, request: dict, reply: Reply) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, backend, model, template_version, json.dumps(request, sort_keys=True), reply.text,
             reply.prompt_tokens, reply.completion_tokens, time.time()),
        )  # fmt: skip
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
