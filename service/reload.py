"""Where the served model comes from, and whether a new export has arrived there.

The model path is an export directory or a symlink to one. An operator (or a training job)
rolls out a new model by writing a new export directory and swapping the symlink, or by
replacing the directory's files; the server notices on its next poll (or at once on
SIGHUP), loads and warms the new export beside the old one, and swaps it in between two
calls. An export that cannot be loaded is rejected with a log line and the old model keeps
serving; the same broken export is not retried until it changes again.
"""

from __future__ import annotations

import os
from pathlib import Path

Signature = tuple[str, tuple[tuple[str, int, int, int, int, int], ...]]


class ModelSource:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._last: Signature | None = None  # of the last load attempt, good or bad

    def resolved(self) -> Path:
        """The export directory the path points at now (symlinks followed)."""
        return Path(os.path.realpath(self.path))

    def signature(self) -> Signature:
        """What identifies the export now: its real path and every file's name, mtime,
        size, mode, owner and change time. Every file: an export copied in place file by
        file may be polled half-way (rejected: its files disagree), and the files copied
        after that must make it new again, or the complete export is never tried. Mode,
        owner and ctime: an export rejected because the server could not read it is tried
        again once an operator fixed its permissions (chmod and chown leave mtime alone)."""
        root = self.resolved()
        return (str(root), tuple(sorted(_stats(root))))

    def changed(self) -> bool:
        """True when the path holds something other than what was last tried."""
        return self.signature() != self._last

    def tried(self, signature: object) -> None:
        self._last = signature  # type: ignore[assignment]


def _stats(root: Path) -> list[tuple[str, int, int, int, int, int]]:
    """(name, mtime ns, size, mode, uid, ctime ns) of the directory's files; none when it
    cannot be read."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    stats = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:  # removed meanwhile
            continue
        stats.append((entry.name, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid,
                      st.st_ctime_ns))  # fmt: skip
    return stats
