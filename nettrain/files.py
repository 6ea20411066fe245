"""Files that survive anything: each written atomically, so a kill at any instant leaves it old or new, never torn."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nettrain.errors import UserError


class WriteError(UserError):
    """A file could not be written (disk full, permissions); the previous one is intact."""

    exit_code = 1


def atomic_write_bytes(data: bytes, *paths: Path) -> None:
    """Write `data` to each of `paths` so that a kill at any instant leaves each one either old or
    new, never torn: one temp file, written and fsynced once, hard-linked beside each further path
    (copied where the filesystem has no hard links), renamed over each, then each directory fsynced.
    One fsync per file instead of one per path matters when epochs are short (last.pt + best.pt)."""
    tmps = [path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in paths]
    failed = paths[0]
    try:
        for path, tmp in zip(paths, tmps):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)  # a stale one from a killed process with this pid
        _write_synced(tmps[0], data)
        for tmp in tmps[1:]:
            try:
                os.link(tmps[0], tmp)
            except OSError:
                _write_synced(tmp, data)
        for path, tmp in zip(paths, tmps):
            failed = path
            os.replace(tmp, path)
        for parent in dict.fromkeys(path.parent for path in paths):
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        for tmp in tmps:
            with contextlib.suppress(OSError):  # a read-only dir refuses this too: the error to show is `e`
                tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {failed}: {e.strerror or e}; the previous file is intact") from e


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(text.encode(), path)
