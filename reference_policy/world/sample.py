"""Records of the training world (:class:`Part`, :class:`Spec`, :class:`WorldSample`) and the :class:`Builder`
that families use to draw parts, pick distinct colours and derive the text and the machine-checkable spec.

Rules every sample obeys (the verifiers rely on them):
- each part type has its own palette colour, distinct from every other part type of the sample, so a part's
  voxels are exactly the voxels of its colour;
- a part with ``count = n`` is drawn as ``n`` pieces that are not 26-connected to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from reference_policy.world.grid import COLOURS, Canvas, index_of

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")
_IRREGULAR = {"shelf": "shelves", "leaf": "leaves", "body": "bodies", "foot": "feet", "glass": "glasses",
              "mattress": "mattresses", "cross": "crosses", "bench": "benches", "branch": "branches"}
#: Minimum centroid height gap (voxels) for a derived "above" relation, and the margin the verifier demands.
RELATION_GAP = 1.5
FULL = np.ones((3, 3, 3), bool)  # 26-connectivity


def plural(word: str) -> str:
    """English plural of the last word of a part type (irregulars from a small table, else + s)."""
    head, _, last = word.rpartition(" ")
    last = _IRREGULAR.get(last, last + "s")
    return f"{head} {last}" if head else last


@dataclass(frozen=True)
class Part:
    """One part type of an object: ``count`` pieces of one colour at a placement (a short phrase)."""

    type: str
    count: int
    colour: str
    placement: str

    def phrase(self, digits: bool) -> str:
        """'four red legs' / '4 red legs' / 'a red top' (count 1)."""
        if self.count == 1:
            return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.colour} {self.type}"
        n = str(self.count) if digits else NUMBER_WORDS[self.count]
        return f"{n} {self.colour} {plural(self.type)}"


Extent = tuple[float, float, float]


def extent_of(mask: np.ndarray) -> Extent:
    """Bounding-box sides of the true voxels of ``mask`` as (longer x/y side, shorter x/y side, height), in voxels;
    (0, 0, 0) when ``mask`` is empty. Sorting the two horizontal sides makes it blind to a quarter turn about z."""
    if not mask.any():
        return (0.0, 0.0, 0.0)
    sides = [float(np.ptp(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))) + 1)
             for axis in range(3)]
    return (max(sides[0], sides[1]), min(sides[0], sides[1]), sides[2])


LAYOUT_BINS = 4
LAYOUT_TRIM = 0.01


def layouts(grid: np.ndarray, colour_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Where the voxels are, free of scale: the box from the ``LAYOUT_TRIM`` to the ``1 - LAYOUT_TRIM`` quantile of
    the occupied voxels' coordinates per axis (a bounding box that a few stray voxels do not stretch) is cut into
    ``LAYOUT_BINS``^3 equal cells, cell ``clip(floor((v - lo) / side * LAYOUT_BINS), 0, LAYOUT_BINS - 1)`` per
    axis, and each histogram counts voxels per cell, normalised to sum 1 (all zeros when there are none). Returns
    (object histogram ``[B, B, B]``, one histogram per entry of ``colour_indices`` ``[n, B, B, B]``)."""
    b = LAYOUT_BINS
    occ = np.argwhere(grid > 0)
    parts = np.zeros((len(colour_indices), b, b, b))
    if len(occ) == 0:
        return np.zeros((b, b, b)), parts
    k_lo, k_hi = int(np.floor(LAYOUT_TRIM * (len(occ) - 1))), int(np.ceil((1 - LAYOUT_TRIM) * (len(occ) - 1)))
    ranked = np.partition(occ, (k_lo, k_hi), axis=0)  # the quantiles of numpy's "lower" / "higher" methods
    lo = ranked[k_lo]
    side = ranked[k_hi] - lo + 1
    cell = np.clip((occ - lo) * b // side, 0, b - 1)
    flat = (cell[:, 0] * b + cell[:, 1]) * b + cell[:, 2]
    slot = np.full(256, len(colour_indices), np.int64)
    slot[np.asarray(colour_indices, np.int64)] = np.arange(len(colour_indices))
    counts = np.bincount(slot[grid[tuple(occ.T)]] * b ** 3 + flat, minlength=(len(colour_indices) + 1) * b ** 3)
    counts = counts.reshape(len(colour_indices) + 1, b, b, b).astype(np.float64)
    whole = counts.sum(axis=0)
    totals = counts[:-1].sum(axis=(1, 2, 3))
    parts = counts[:-1] / np.maximum(totals, 1)[:, None, None, None]
    return whole / whole.sum(), parts


@dataclass(frozen=True)
class PartShape:
    """One part type measured on a grid.

    - ``pieces``: the number of its 26-connected components of at least the minimum size (in voxels);
    - ``fraction``: its voxels / all occupied voxels;
    - ``piece_extent``: the median over its pieces of their :func:`extent_of` sides ((0, 0, 0) without pieces);
    - ``mean_z``: the mean height of its voxels (``None`` when absent);
    - ``layout``: its :func:`layouts` histogram, flattened.
    """

    pieces: int
    fraction: float
    piece_extent: Extent
    mean_z: float | None
    layout: tuple[float, ...]


def measure_part(grid: np.ndarray, colour_index: int, min_size: int, occupied: int, layout: np.ndarray
                 ) -> PartShape:
    """:class:`PartShape` of the voxels of one palette value (``occupied``: the grid's occupied voxel count;
    ``layout``: the part's histogram from :func:`layouts`)."""
    mask = grid == colour_index
    n_voxels = int(mask.sum())
    flat = tuple(float(v) for v in layout.ravel())
    if n_voxels == 0:
        return PartShape(0, 0.0, (0.0, 0.0, 0.0), None, flat)
    labels, n = ndimage.label(mask, FULL)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labels)
    sides = [(s[0].stop - s[0].start, s[1].stop - s[1].start, s[2].stop - s[2].start)
             for i, s in enumerate(boxes) if sizes[i + 1] >= min_size]
    extent = (0.0, 0.0, 0.0)
    if sides:
        a = np.array(sides, dtype=np.float64)
        extent = tuple(float(v) for v in np.median(
            np.stack([a[:, :2].max(axis=1), a[:, :2].min(axis=1), a[:, 2]], axis=1), axis=0))
    mean_z = float((mask.sum(axis=(0, 1)) * np.arange(grid.shape[2])).sum() / n_voxels)
    return PartShape(len(sides), n_voxels / max(occupied, 1), extent, mean_z, flat)


@dataclass(frozen=True)
class Spec:
    """What a generated grid must satisfy, with facts of the ground truth that rewards compare against.

    - ``counts``: part type -> (colour, expected count, minimum component size in voxels);
    - ``colours``: colour -> minimum fraction of occupied voxels (half the ground-truth fraction);
    - ``relations``: (upper part, "above", lower part) triples;
    - ``volume``: occupied voxels of the ground truth;
    - ``extent``: :func:`extent_of` the ground truth's occupied voxels;
    - ``shapes``: part type -> :class:`PartShape` of the ground truth;
    - ``layout``: the ground truth's :func:`layouts` object histogram, flattened;
    - ``stable``: the object must rest on z = 0 with its centre of mass over its footprint.
    """

    counts: dict[str, tuple[str, int, int]]
    colours: dict[str, float]
    relations: tuple[tuple[str, str, str], ...]
    volume: int
    extent: Extent
    shapes: dict[str, PartShape]
    layout: tuple[float, ...]
    stable: bool = True


@dataclass(frozen=True)
class WorldSample:
    family: str
    category: str
    prompts: tuple[str, ...]
    plan: str
    parts: tuple[Part, ...]
    grid: np.ndarray
    spec: Spec
    seed: int

    @property
    def primary_colour(self) -> str:
        """Colour of the first (main) part: the attribute the held-out combinations are defined on."""
        return self.parts[0].colour


class Builder:
    """Draw parts of one object; :meth:`finish` derives prompts, plan and spec."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.canvas = Canvas()
        self.parts: list[Part] = []

    def colour(self, *options: str) -> str:
        """A random colour from ``options`` not used by an earlier part (any unused palette colour if none is left)."""
        used = {p.colour for p in self.parts}
        free = [c for c in options if c not in used] or [c for c in COLOURS if c not in used]
        return str(free[int(self.rng.integers(len(free)))])

    def add(self, type: str, colour: str, placement: str, *masks: np.ndarray, count: int | None = None) -> None:
        """Paint ``masks`` (one per piece, count = len(masks) unless given) in ``colour``, record the part."""
        for m in masks:
            self.canvas.paint(m, colour)
        self.parts.append(Part(type, len(masks) if count is None else count, colour, placement))

    def finish(self, family: str, category: str, noun: str, seed: int, style: str = "") -> WorldSample:
        grid = self.canvas.grid
        parts = tuple(self.parts)
        occupied = max(int((grid > 0).sum()), 1)
        counts, colours, shapes = {}, {}, {}
        whole, part_layouts = layouts(grid, [index_of(p.colour) for p in parts])
        for p, layout in zip(parts, part_layouts):
            mask = grid == index_of(p.colour)
            labels, n = ndimage.label(mask, FULL)
            sizes = np.bincount(labels.ravel())[1:] if n else np.array([1])
            counts[p.type] = (p.colour, p.count, int(max(1, min(3, sizes.min() // 2))))
            colours[p.colour] = 0.5 * float(mask.sum()) / occupied
            shapes[p.type] = measure_part(grid, index_of(p.colour), counts[p.type][2], occupied, layout)
        cz = {t: shape.mean_z if shape.mean_z is not None else 0.0 for t, shape in shapes.items()}
        order = sorted(parts, key=lambda p: cz[p.type])
        relations = tuple((hi.type, "above", lo.type) for lo, hi in zip(order, order[1:])
                          if cz[hi.type] - cz[lo.type] >= RELATION_GAP)
        spec = Spec(counts, colours, relations, volume=int((grid > 0).sum()), extent=extent_of(grid > 0),
                    shapes=shapes, layout=tuple(float(v) for v in whole.ravel()))
        return WorldSample(family, category, _prompts(noun, style, parts), _plan(noun, parts), parts,
                           grid, spec, seed)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _prompts(noun: str, style: str, parts: tuple[Part, ...]) -> tuple[str, ...]:
    """Three paraphrases: counts as words, counts as digits, and a reordered digit list."""
    full = f"{style} {noun}".strip()
    art = "An" if full[0] in "aeiou" else "A"
    words = [p.phrase(False) for p in parts]
    digits = [p.phrase(True) for p in parts]
    return (f"{art} {full} with {_join(words)}.",
            f"3D model of {art.lower()} {full} made of {_join(digits)}.",
            f"{_join(digits[::-1]).capitalize()}, forming {art.lower()} {full}.")


def _plan(noun: str, parts: tuple[Part, ...]) -> str:
    """'a table: four black legs, at the corners; a brown top, on top of the legs'."""
    return f"a {noun}: " + "; ".join(f"{p.phrase(False)}, {p.placement}" for p in parts)
