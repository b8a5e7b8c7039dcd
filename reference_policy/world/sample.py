"""Records of the training world (:class:`Part`, :class:`Spec`, :class:`WorldSample`) and the :class:`Builder`
that families use to draw parts, pick distinct colours and derive the text and the machine-checkable spec.

Rules every sample obeys (the verifiers rely on them):
- each part type has its own palette colour, distinct from every other part type of the sample, so a part's
  voxels are exactly the voxels of its colour;
- a part with ``count = n`` is drawn as ``n`` pieces that are not 26-connected to each other.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Spec:
    """What a generated grid must satisfy.

    - ``counts``: part type -> (colour, expected count, minimum component size in voxels);
    - ``colours``: colour -> minimum fraction of occupied voxels (half the ground-truth fraction);
    - ``relations``: (upper part, "above", lower part) triples;
    - ``stable``: the object must rest on z = 0 with its centre of mass over its footprint.
    """

    counts: dict[str, tuple[str, int, int]]
    colours: dict[str, float]
    relations: tuple[tuple[str, str, str], ...]
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
        counts, colours, cz = {}, {}, {}
        for p in parts:
            mask = grid == index_of(p.colour)
            labels, n = ndimage.label(mask, FULL)
            sizes = np.bincount(labels.ravel())[1:] if n else np.array([1])
            counts[p.type] = (p.colour, p.count, int(max(1, min(3, sizes.min() // 2))))
            colours[p.colour] = 0.5 * float(mask.sum()) / occupied
            cz[p.type] = float(np.argwhere(mask)[:, 2].mean()) if mask.any() else 0.0
        order = sorted(parts, key=lambda p: cz[p.type])
        relations = tuple((hi.type, "above", lo.type) for lo, hi in zip(order, order[1:])
                          if cz[hi.type] - cz[lo.type] >= RELATION_GAP)
        spec = Spec(counts, colours, relations)
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
