"""A picture per item: a PNG file from a directory, or one drawn from the item id.

    images = ItemImages(directory=None)
    png = images.png("item-042")      # bytes of a 64x64 RGB PNG, the same every time

training/data/images.py draws the p-RNN's synthetic pictures from the generator's categories,
with matplotlib, which the web front must not need; the ids alone do not carry the
category. So without --images each id gets its own look: two colours, a pattern (stripes,
checks, rings, waves), its angle and frequency, all from the sha256 of the id. That is
enough to recognise an item again in the grid and in the recommendations.
"""

from __future__ import annotations

import colorsys
import hashlib
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

SIZE = 64  # pixels a side: small enough to draw in well under a millisecond
PATTERNS = ("stripes", "checks", "rings", "waves")
_AXIS = np.linspace(-1.0, 1.0, SIZE)
_V, _U = np.meshgrid(_AXIS, _AXIS, indexing="ij")  # (SIZE, SIZE) each


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (8-bit RGB, no filtering)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    height, width, _ = rgb.shape
    # each row starts with its filter type, 0 (none)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def draw(item_id: str) -> np.ndarray:
    """The item's picture, uint8 (SIZE, SIZE, 3), a function of the id alone."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    hue = digest[0] / 256
    # the second colour sits a third to two thirds round the wheel, so the two always differ
    other = (hue + 1 / 3 + digest[1] / 256 / 3) % 1.0
    light = colorsys.hsv_to_rgb(hue, 0.45 + digest[2] / 256 * 0.4, 0.95)
    dark = colorsys.hsv_to_rgb(other, 0.6 + digest[3] / 256 * 0.4, 0.35 + digest[4] / 256 * 0.3)
    pattern = PATTERNS[digest[5] % len(PATTERNS)]
    angle = digest[6] / 256 * np.pi
    freq = 1.5 + digest[7] / 256 * 4.0
    phase = digest[8] / 256 * 2 * np.pi
    along = _U * np.cos(angle) + _V * np.sin(angle)
    across = -_U * np.sin(angle) + _V * np.cos(angle)
    if pattern == "stripes":
        wave = np.sin(freq * np.pi * along + phase)
    elif pattern == "checks":
        wave = np.sin(freq * np.pi * along + phase) * np.sin(freq * np.pi * across)
    elif pattern == "rings":
        wave = np.sin(freq * np.pi * np.hypot(along * 1.2, across) + phase)
    else:
        wave = np.sin(freq * np.pi * (along + 0.2 * np.sin(3 * np.pi * across)) + phase)
    mix = (wave > 0)[..., None]  # (SIZE, SIZE, 1)
    rgb = np.where(mix, np.array(light), np.array(dark))
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4096)  # a grid page and the recommendations ask for the same ids again
def drawn_png(item_id: str) -> bytes:
    return encode_png(draw(item_id))


class ItemImages:
    """PNG bytes per item id: `<directory>/<item>.png` when a directory is given and holds
    one, else the drawn picture."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory.resolve() if directory is not None else None
        if self.directory is not None and not self.directory.is_dir():
            raise ValueError(f"--images {directory} is not a directory of <item>.png files")

    def file_for(self, item_id: str) -> Path | None:
        """The item's file in the directory, or None. Ids that would leave the directory
        (a '/' or '..' in them) never match a file."""
        if self.directory is None or "/" in item_id or "\\" in item_id or item_id in ("", ".."):
            return None
        path = self.directory / f"{item_id}.png"
        return path if path.is_file() else None

    def png(self, item_id: str) -> tuple[bytes, bool]:
        """(PNG bytes, True if drawn rather than read from the directory)."""
        path = self.file_for(item_id)
        if path is not None:
            return path.read_bytes(), False
        return drawn_png(item_id), True
