"""A content-addressed cache of derivation replies, in SQLite.

The key is a hash of everything that determines a reply: backend, model, template version,
generation parameters and the messages sent (which hold the input text). A re-run, a run
after a crash or after partial failures therefore sends only requests whose key is absent;
changing a template's version or a generation parameter makes new keys and leaves the old
replies in place. Each reply is committed as soon as it arrives.

API keys never reach this file: they are not part of a request.

The journal mode depends on where the file is (:func:`choose_journal_mode`). SQLite's WAL mode
keeps the index of its log in memory shared through a ``-shm`` file, which works only among
processes of one host: on a network file system (NFS, Lustre, GPFS, CIFS, BeeGFS, CephFS...) it
can corrupt the database or fail to open it. So WAL is used only on a file system known to be
local, and the rollback journal (``DELETE``), which needs only POSIX file locks, everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
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


MOUNTS = Path("/proc/mounts")
# File systems of one host, on which WAL's shared memory works. Any other type (nfs, nfs4, lustre,
# gpfs, cifs, smb3, beegfs, ceph, fuse.*, ...), or none found, gets the rollback journal.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "tmpfs", "ramfs",
                      "overlay", "apfs", "hfs", "hfsplus"})  # fmt: skip


def _unescape(field: str) -> str:
    # /proc/mounts writes a space, tab, newline or backslash in a path as \040, \011, \012, \134.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | Path, mounts: str | None = None) -> str | None:
    """The type of the file system that holds ``path``, from a mount table in /proc/mounts' format
    (``mounts``, or /proc/mounts itself): that of the longest mount point above the path. None when
    there is no mount table (not Linux) or no mount point matches."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, fstype = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # >=: a later mount on the same point hides an earlier one
            best, fstype = len(point), fields[2]
    return fstype


def choose_journal_mode(fstype: str | None) -> str:
    """SQLite's journal mode for a database on a file system of type ``fstype`` (None: unknown)."""
    return "WAL" if fstype in LOCAL_FS else "DELETE"


class ReplyCache:
    """``journal_mode``: ``"WAL"`` or ``"DELETE"``; by default the one for the file system of ``path``."""

    def __init__(self, path: str | Path, journal_mode: str | None = None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        mode = (journal_mode or choose_journal_mode(filesystem_type(Path(path).parent))).upper()
        if mode not in ("WAL", "DELETE"):
            raise ValueError(f"journal_mode must be WAL or DELETE, not {journal_mode!r}")
        # One connection, used from one thread. In WAL mode a reader (a test, a progress check) looks
        # while the derivation writes; with the rollback journal it waits for a commit (timeout).
        self._db = sqlite3.connect(path, timeout=60)
        # The mode in effect: SQLite keeps the old one when it cannot switch (another connection open).
        self.journal_mode = self._db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0].upper()
        # WAL with NORMAL loses no committed reply on a crash of the process (only on a power loss);
        # the rollback journal needs FULL for that. Replies come seconds apart: the syncs cost nothing.
        self._db.execute(f"PRAGMA synchronous={'NORMAL' if self.journal_mode == 'WAL' else 'FULL'}")
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
