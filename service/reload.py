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

from .runtime import METADATA_FILE, MODEL_FILE

Signature = tuple[str, tuple[int, int] | None, tuple[int, int] | None]


class ModelSource:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._last: Signature | None = None  # of the last load attempt, good or bad

    def resolved(self) -> Path:
        """The export directory the path points at now (symlinks followed)."""
        return Path(os.path.realpath(self.path))

    def signature(self) -> Signature:
        """What identifies the export now: its real path and its files' mtime and size."""
        root = self.resolved()
        return (str(root), _stat(root / METADATA_FILE), _stat(root / MODEL_FILE))

    def changed(self) -> bool:
        """True when the path holds something other than what was last tried."""
        return self.signature() != self._last

    def tried(self, signature: object) -> None:
        self._last = signature  # type: ignore[assignment]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
