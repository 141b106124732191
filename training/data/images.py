"""Synthetic item pictures whose look carries part of what a session does next.

In `training.data.synthetic` an item's likely successors are items of the same category with a
nearby `style` (a position on a circle). The pictures show both:

- category -> colour pair (hue spread by the golden ratio, so neighbouring categories do
  not look alike), pattern family (stripes, checks, ellipses, waves) and pattern frequency;
- style s in [0, 1) -> pattern orientation s * 180 degrees, which wraps around like the
  circle it encodes, so successors look like rotated versions of each other;
- per item, a random phase and pixel noise, so no two items look exactly the same.

    images = SyntheticImages.from_catalog(cat, size=32)
    batch = images.batch(0, 256)          # uint8 (256, 3, 32, 32)
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import hsv_to_rgb

from .synthetic import SyntheticCatalog

PATTERNS = ("stripes", "checks", "ellipses", "waves")
GOLDEN = 0.6180339887498949


class SyntheticImages:
    """An image source over items 0..n-1 (see features.ImageSource): `batch(start, stop)`
    draws the pictures of items start..stop-1 as uint8 (b, 3, size, size).

    category: int (n,) in [0, n_categories); style: float (n,) in [0, 1), default 0.
    The same arguments always give the same pictures."""

    def __init__(
        self,
        category: np.ndarray,
        style: np.ndarray | None = None,
        n_categories: int | None = None,
        size: int = 32,
        seed: int = 0,
        noise: float = 0.06,
    ):
        self.category = np.asarray(category, dtype=np.int64)
        n = len(self.category)
        self.style = np.zeros(n) if style is None else np.asarray(style, dtype=np.float64)
        self.n_categories = int(n_categories or (self.category.max() + 1 if n else 1))
        if len(self.style) != n:
            raise ValueError(f"got {len(self.style)} styles for {n} categories; give one per item")
        if n and (self.category.min() < 0 or self.category.max() >= self.n_categories):
            raise ValueError(f"categories must lie in [0, n_categories={self.n_categories})")
        if size < 8:
            raise ValueError(f"size={size} is too small to draw a pattern; use 8 or more")
        self.size, self.seed, self.noise = size, seed, noise
        self.phase = np.random.default_rng(seed).random(n)  # per-item look, fixed by seed
        self.ids = np.arange(n)  # what seeds an item's noise; kept by subset()
        axis = np.linspace(-1.0, 1.0, size)
        self.v, self.u = np.meshgrid(axis, axis, indexing="ij")  # (size, size) each

    @classmethod
    def from_catalog(cls, cat: SyntheticCatalog, size: int = 32, seed: int = 0):
        n_categories = int(cat.item_category.max()) + 1
        return cls(cat.item_category, cat.item_style, n_categories, size=size, seed=seed)

    def __len__(self) -> int:
        return len(self.category)

    def subset(self, items: np.ndarray) -> SyntheticImages:
        """The same items' pictures in another order, e.g. a vocabulary's (index -> item)."""
        out = SyntheticImages(
            self.category[items],
            self.style[items],
            self.n_categories,
            self.size,
            self.seed,
            self.noise,
        )
        out.phase, out.ids = self.phase[items], self.ids[items]
        return out

    def batch(self, start: int, stop: int) -> np.ndarray:
        """uint8 (stop - start, 3, size, size) pictures of items start..stop-1."""
        items = np.arange(start, min(stop, len(self)))
        t = self._pattern(items)  # (b, size, size) in [0, 1]
        fg, bg = self._colours(self.category[items])  # (b, 3) each
        rgb = bg[:, :, None, None] + t[:, None] * (fg - bg)[:, :, None, None]
        # noise seeded per item, so a picture does not depend on the batch it comes in
        noise = (
            np.stack(
                [
                    np.random.default_rng((self.seed, int(i))).normal(
                        0.0, self.noise, rgb.shape[1:]
                    )
                    for i in self.ids[items]
                ]
            )
            if len(items)
            else 0.0
        )
        return np.clip(np.rint((rgb + noise) * 255.0), 0, 255).astype(np.uint8)

    def _colours(self, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hue = (category * GOLDEN) % 1.0
        ones = np.ones_like(hue)
        fg = hsv_to_rgb(np.stack([hue, 0.85 * ones, 0.95 * ones], axis=1))
        bg = hsv_to_rgb(np.stack([(hue + 0.5) % 1.0, 0.35 * ones, 0.3 * ones], axis=1))
        return fg, bg

    def _pattern(self, items: np.ndarray) -> np.ndarray:
        """Intensity (b, size, size) in [0, 1]: the category's pattern family at its
        frequency, rotated by the item's style, shifted by its phase."""
        category = self.category[items]
        family = category % len(PATTERNS)
        freq = 1.5 + (category // len(PATTERNS)) % 3  # cycles across the picture
        theta = np.pi * self.style[items]
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        a = self.u * cos + self.v * sin  # along the pattern's direction
        b = -self.u * sin + self.v * cos  # across it
        f = freq[:, None, None]
        phase = 2.0 * np.pi * self.phase[items][:, None, None]
        wave = np.pi * f * a + phase
        shapes = np.stack(
            [
                np.sin(wave),  # stripes
                np.sign(np.sin(wave)) * np.sign(np.sin(0.5 * np.pi * f * b)),  # oblong checks
                np.sin(np.pi * f * np.sqrt(a**2 + (2.5 * b) ** 2) + phase),  # ellipses
                np.sin(wave + 1.5 * np.sin(np.pi * f * b)),  # waves
            ]
        )  # (4, b, size, size)
        chosen = shapes[family, np.arange(len(items))]
        return 0.5 + 0.5 * chosen
