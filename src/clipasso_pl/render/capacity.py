"""Buffer sizes of a static render, and the policy that sizes them from what renders needed.

A render sized by a :class:`Capacity` has shapes that depend only on host numbers, so it
reads nothing back from the device (no host sync) and compiles as one graph. What a render
*needs* is measured on the device every time (``NEEDS``); when a need exceeds its capacity
the render is marked overflowed and its image is NaN, so the training step that used it is
non-finite and skipped on the device like any other non-finite step, never silently wrong.

Sizes are per stroke (``Budget``) times the number of strokes, so one budget serves every
stroke count (``num_stages`` adds strokes). ``Budget.fit`` sizes a budget from measured
needs with headroom, on a coarse grid and with hysteresis, so that the sizes (and with them
a compiled graph) change rarely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Chord length (px) when flattening a stroke: the search window of a chord is about
# (CHORD + 2 * margin)^2 pixels, so this trades the number of chords against window size.
CHORD = 4.0
# A pixel square cannot touch a band of half-width r farther than r + sqrt(2)/2 from
# its centre; the rest covers the gap between a chord and the curve it replaces.
MARGIN = 0.7072 + 0.35

# What a render needs, in this order (a long tensor [6] on the device).
NEEDS = ("chords", "patch", "pairs", "path_patch", "window_major", "window_minor")


def window_for(half_width: float) -> tuple[int, int]:
    """(major, minor) window of a chord of length CHORD of a stroke of ``half_width``: the pixels
    within its margin span at most floor(extent + 2 margin) + 1 along an axis, the extent being
    at most CHORD along the chord's major axis and CHORD / sqrt(2) along the other."""
    m2 = 2 * (max(float(half_width), 0.0) + MARGIN)
    return math.floor(CHORD + m2) + 1, math.floor(CHORD / math.sqrt(2) + m2) + 1


@dataclass(frozen=True)
class Capacity:
    """Sizes of one static render (host ints).

    chords: int      # G, chords of all strokes (about arc length / CHORD each)
    patch: int       # P, pixels of all strokes' patches (bounding box + margin, clipped)
    pairs: int       # M, (stroke, pixel) pairs within reach of a stroke
    path_patch: int  # pixels of all paths' patches (segments > 1 only)
    window: tuple    # (major, minor) search window of a chord, pixels
    """

    chords: int
    patch: int
    pairs: int
    path_patch: int
    window: tuple[int, int]

    def __post_init__(self) -> None:
        values = (self.chords, self.patch, self.pairs, self.path_patch, *self.window)
        if len(self.window) != 2 or any(int(v) != v or v < 1 for v in values):
            raise ValueError(f"capacity sizes must be positive integers, got {self}")

    def as_needs(self) -> tuple[int, ...]:
        """The sizes in ``NEEDS`` order."""
        return (self.chords, self.patch, self.pairs, self.path_patch, *self.window)

    def overflowed(self, needs) -> list[str]:
        """Names of the sizes that ``needs`` (``NEEDS`` order, host numbers) exceed."""
        return [name for name, need, cap in zip(NEEDS, needs, self.as_needs()) if need > cap]


def _grid(x: float) -> int:
    """The smallest value >= x on a grid of 4 steps per doubling (..., 64, 76, 91, 108, 128, ...)."""
    if x <= 16:
        return 16
    e = math.ceil(4 * math.log2(x) - 1e-9)
    value = math.ceil(2 ** (e / 4))
    return value if value >= x else value + 1


@dataclass(frozen=True)
class Budget:
    """Per-stroke sizes: ``capacity(B)`` is B times each (on a grid), plus the window.

    The defaults fit strokes of a control polygon of ~190 px on average (4x CLIPasso's
    initial strokes) of half-width up to 1.5 px; they are used until a first fit.
    """

    chords: float = 48.0
    patch: float = 8192.0
    pairs: float = 1536.0
    path_patch: float = 8192.0
    window: tuple[int, int] = window_for(1.5)

    # A fitted size is its need times HEADROOM; it is refitted when a need passes GROW of
    # it or falls under SHRINK of it (hysteresis: small changes keep the sizes).
    HEADROOM = 1.25
    # For a compiled step, where each change of sizes recompiles its graph: sizes only grow, and
    # by twice the need, so a run changes them a few times (log2 of how much its strokes grow).
    COMPILED_HEADROOM = 2.0
    GROW = 0.9
    SHRINK = 0.4
    # Smallest fitted per-stroke sizes (a moment with every stroke off the canvas needs 0).
    FLOOR = (4.0, 256.0, 64.0, 256.0)

    def capacity(self, num_strokes: int, segments: int = 1) -> Capacity:
        """Sizes for ``num_strokes`` one-cubic strokes (S x N x segments of them)."""
        b = max(int(num_strokes), 1)
        path = self.path_patch if segments > 1 else 1.0
        return Capacity(_grid(self.chords * b), _grid(self.patch * b), _grid(self.pairs * b),
                        _grid(path * b), tuple(int(w) for w in self.window))

    def fit(self, per_stroke: list[float], window: tuple[int, int], shrink: bool = True,
            headroom: float | None = None) -> "Budget":
        """A budget for measured per-stroke needs (chords, patch, pairs, path_patch) and window.

        Each size is kept while its need stays between SHRINK and GROW of it, else set to the need
        times ``headroom`` (HEADROOM); the window only grows. With ``shrink=False`` sizes only grow,
        and when one must, all grow to their need times ``headroom`` at once (the needs grow together
        as strokes lengthen, so that is one change of sizes instead of one per size)."""
        headroom = self.HEADROOM if headroom is None else headroom
        haves = (self.chords, self.patch, self.pairs, self.path_patch)
        needs = [float(n) for n in per_stroke]
        if not shrink:
            if all(need <= self.GROW * have for have, need in zip(haves, needs)):
                return Budget(*haves, window=self._window(window))
            return Budget(*(max(have, need * headroom) for have, need in zip(haves, needs)), window=self._window(window))
        sizes = []
        for have, need, floor in zip(haves, needs, self.FLOOR):
            keep = self.SHRINK * have <= need <= self.GROW * have or need == 0  # 0: not measured (segments = 1)
            sizes.append(have if keep else max(need * headroom, floor))
        return Budget(*sizes, window=self._window(window))

    def _window(self, window: tuple[int, int]) -> tuple[int, int]:
        """The window grown to ``window`` (it never shrinks)."""
        return max(self.window[0], int(window[0])), max(self.window[1], int(window[1]))
