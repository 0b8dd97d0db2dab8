"""Files guestfail keeps: the state file, the journal, atomic writes.

The state file (<state_dir>/state.json) is what `guestfail status` reads
when the daemon does not answer; the journal (<state_dir>/journal/, see
guestfail.core.journal for what an entry holds) is what makes a crash at any
step recoverable.  Every write is atomic (a new file renamed over the old
one); the journal's are durable too (fsync of the file and the directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from guestfail.core.journal import Entry, from_json, to_json
from guestfail.core.records import SCHEMA

log = logging.getLogger(__name__)


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read(path: Path) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None


# ------------------------------------------------------------------ the journal


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".json"


class Journal:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / _file_name(key)

    def get(self, key: str) -> Optional[Entry]:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                return from_json(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.error("journal entry %s unreadable (%s): ignored", self.path(key), e)
            return None

    def all(self) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(self.dir / name, encoding="utf-8") as f:
                    e = from_json(json.load(f))
            except (OSError, ValueError, TypeError) as err:
                log.error("journal entry %s unreadable (%s): ignored", self.dir / name, err)
                continue
            out[e.key] = e
        return out

    def write(self, e: Entry) -> None:
        """Durable before it returns: the data and the directory entry."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".entry-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(to_json(e), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(e.key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync_dir()

    def clear(self, key: str) -> None:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
