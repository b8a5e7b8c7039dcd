"""Object families of the training world, registered in :data:`FAMILIES` (name -> :class:`Family`).

Each family is ``f(rng, seed) -> WorldSample``: it draws counts, colours, sizes and placements from ``rng``,
paints the parts with a :class:`~reference_policy.world.sample.Builder` and lets it derive prompts, plan and spec.
Tall or top-heavy objects stand on a base so that every sample is statically stable, and every part rests on or
touches another (each 26-connected component of a grid reaches ``z = 0``: nothing floats). A part's pieces are
told apart by their visible voxels: no piece is joined to another, or split, only through voxels hidden inside
the object (so a mesh of the object, which shows no interior, voxelises back to the same counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from reference_policy.world.grid import CENTRE as C
from reference_policy.world.grid import box, cone, cylinder, ellipsoid, ring, segment
from reference_policy.world.sample import Builder, WorldSample

FamilyFn = Callable[[np.random.Generator, int], WorldSample]
WOOD = ("brown", "beige", "black", "white", "grey")
BRIGHT = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
METAL = ("grey", "black", "gold", "white")


@dataclass(frozen=True)
class Family:
    name: str
    category: str
    fn: FamilyFn


FAMILIES: dict[str, Family] = {}


def family(name: str, category: str) -> Callable[[FamilyFn], FamilyFn]:
    def register(fn: FamilyFn) -> FamilyFn:
        FAMILIES[name] = Family(name, category, fn)
        return fn
    return register


def _i(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(rng.integers(lo, hi + 1))


def _around(n: int, radius: float, phase: float = 0.0) -> list[tuple[float, float, float]]:
    """(x, y, angle) of n points evenly spaced on a circle around the centre line."""
    return [(C + radius * math.cos(a), C + radius * math.sin(a), a)
            for a in (phase + 2 * math.pi * k / n for k in range(n))]


def _corner_legs(hx: float, hy: float, z1: float, r: float = 1.0) -> list[np.ndarray]:
    return [box(C + sx * hx - r, C + sx * hx + r, C + sy * hy - r, C + sy * hy + r, 0, z1)
            for sx in (-1, 1) for sy in (-1, 1)]


# ---------------------------------------------------------------- spatial & structural geometry
@family("table", "spatial")
def table(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    hx, hy, h = _i(rng, 7, 11), _i(rng, 5, 9), _i(rng, 8, 14)
    b.add("leg", b.colour(*WOOD), "at the corners", *_corner_legs(hx - 1, hy - 1, h - 1))
    b.add("top", b.colour(*WOOD, *BRIGHT), "on top of the legs", box(C - hx, C + hx, C - hy, C + hy, h, h + 1))
    return b.finish("table", "spatial", "table", seed)


@family("chair", "spatial")
def chair(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    h, n = _i(rng, 7, 10), _i(rng, 2, 4)
    b.add("leg", b.colour(*WOOD), "at the corners", *_corner_legs(5, 5, h - 1))
    b.add("seat", b.colour(*WOOD, *BRIGHT), "above the legs", box(C - 6, C + 6, C - 6, C + 6, h, h + 1))
    xs = np.linspace(C - 5, C + 5, n)
    b.add("backrest slat", b.colour(*WOOD), "rising from the back of the seat",
          *[box(x - 0.6, x + 0.6, C + 5, C + 6, h + 2, h + 11) for x in xs])
    b.add("top rail", b.colour(*WOOD, *BRIGHT), "across the top of the slats",
          box(C - 6, C + 6, C + 5, C + 6, h + 12, h + 13))
    return b.finish("chair", "spatial", "chair", seed)


@family("stool", "spatial")
def stool(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n, h, r = _i(rng, 3, 5), _i(rng, 8, 14), _i(rng, 5, 7)
    b.add("leg", b.colour(*WOOD, *METAL), "spread under the seat",
          *[cylinder(x, y, 1.0, 0, h - 1) for x, y, _ in _around(n, r - 1.5)])
    b.add("seat", b.colour(*BRIGHT, *WOOD), "round, on top", cylinder(C, C, r, h, h + 1))
    return b.finish("stool", "spatial", "stool", seed)


@family("bookshelf", "spatial")
def bookshelf(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n, w = _i(rng, 2, 6), _i(rng, 6, 10)
    height = 4 * n + 4
    b.add("side panel", b.colour(*WOOD), "on the left and right",
          box(C - w - 1, C - w, C - 4, C + 4, 0, height), box(C + w, C + w + 1, C - 4, C + 4, 0, height))
    b.add("shelf", b.colour(*WOOD, *BRIGHT), "stacked at even heights",
          *[box(C - w + 1, C + w - 1, C - 4, C + 4, 4 * k + 2, 4 * k + 2) for k in range(n)])
    return b.finish("bookshelf", "spatial", "bookshelf", seed)


@family("bed", "spatial")
def bed(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 1, 3)
    b.add("leg", b.colour(*WOOD), "at the corners", *_corner_legs(7, 11, 2))
    b.add("frame", b.colour(*WOOD), "on the legs", box(C - 8, C + 8, C - 12, C + 12, 3, 4))
    b.add("mattress", b.colour("white", "blue", "beige", "pink"), "on the frame",
          box(C - 8, C + 8, C - 12, C + 8, 5, 7))
    b.add("headboard", b.colour(*WOOD, *BRIGHT), "at the head end",
          box(C - 8, C + 8, C + 11, C + 12, 5, 14))
    xs = np.linspace(C - 5, C + 5, n) if n > 1 else [C]
    b.add("pillow", b.colour(*BRIGHT), "against the headboard",
          *[box(x - 1.5, x + 1.5, C + 6, C + 9, 8, 9) for x in xs])
    return b.finish("bed", "spatial", "bed", seed)


@family("bench", "spatial")
def bench(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    pairs, slats = _i(rng, 2, 3), _i(rng, 2, 4)
    xs = np.linspace(C - 12, C + 12, pairs)
    b.add("leg", b.colour(*METAL, *WOOD), "in pairs under the seat",
          *[box(x - 0.6, x + 0.6, C + s * 3 - 2, C + s * 3 + 2, 0, 6) for x in xs for s in (-1, 1)])
    b.add("slat", b.colour(*WOOD, *BRIGHT), "side by side forming the seat",
          *[box(C - 13, C + 13, y - 0.6, y + 0.6, 7, 7) for y in np.linspace(C - 5, C + 5, slats)])
    return b.finish("bench", "spatial", "bench", seed)


@family("ladder", "spatial")
def ladder(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 8)
    top = 3 * n + 4
    b.add("foot", b.colour("black", "grey"), "under the rails",
          box(C - 8, C - 2, C - 4, C + 4, 0, 0), box(C + 2, C + 8, C - 4, C + 4, 0, 0))
    b.add("rail", b.colour(*WOOD, *METAL), "on both sides",
          box(C - 6, C - 5, C - 0.5, C + 0.5, 1, top), box(C + 5, C + 6, C - 0.5, C + 0.5, 1, top))
    b.add("rung", b.colour(*WOOD, *BRIGHT), "evenly spaced between the rails",
          *[box(C - 4, C + 4, C - 0.5, C + 0.5, 3 * k + 4, 3 * k + 4) for k in range(n)])
    return b.finish("ladder", "spatial", "ladder", seed)


@family("fence", "spatial")
def fence(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 7)
    b.add("post", b.colour(*WOOD, "white"), "in a row",
          *[box(x - 0.6, x + 0.6, C - 1, C + 1, 0, 10) for x in np.linspace(C - 13, C + 13, n)])
    b.add("rail", b.colour(*WOOD, *BRIGHT), "across the posts at two heights",
          box(C - 14, C + 14, C + 2, C + 2, 3, 4), box(C - 14, C + 14, C + 2, C + 2, 7, 8))
    b.add("cap", b.colour(*BRIGHT), "on top of the end posts",
          box(C - 14, C - 12, C - 1, C + 1, 11, 12), box(C + 12, C + 14, C - 1, C + 1, 11, 12))
    return b.finish("fence", "spatial", "fence", seed)


@family("tower", "spatial")
def tower(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n, w = _i(rng, 2, 5), _i(rng, 4, 7)
    b.add("floor", b.colour(*BRIGHT, "white", "beige"), "stacked one above another",
          *[box(C - w, C + w, C - w, C + w, 5 * k + 1, 5 * k + 4) for k in range(n)])
    b.add("slab", b.colour(*WOOD, "grey"), "between and under the floors",
          *[box(C - w - 1, C + w + 1, C - w - 1, C + w + 1, 5 * k, 5 * k) for k in range(n + 1)])
    b.add("spire", b.colour("gold", "red", "black"), "on the roof", cone(C, C, 5 * n + 1, 3, 6))
    return b.finish("tower", "spatial", "tower", seed)


@family("arch_bridge", "spatial")
def arch_bridge(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n, h = _i(rng, 2, 4), _i(rng, 6, 10)
    b.add("pillar", b.colour("grey", "beige", "brown"), "in a row under the deck",
          *[box(x - 1, x + 1, C - 3, C + 3, 0, h) for x in np.linspace(C - 13, C + 13, n)])
    b.add("deck", b.colour(*WOOD, *BRIGHT), "spanning the pillars", box(C - 15, C + 15, C - 4, C + 4, h + 1, h + 2))
    b.add("railing", b.colour(*METAL, "white"), "along both edges of the deck",
          box(C - 15, C + 15, C - 4, C - 4, h + 3, h + 3), box(C - 15, C + 15, C + 4, C + 4, h + 3, h + 3))
    return b.finish("arch_bridge", "spatial", "bridge", seed)


# ---------------------------------------------------------------- mechanical affordances
@family("cart", "mechanical")
def cart(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    pairs = _i(rng, 2, 3)
    b.add("wheel", b.colour("black", "grey"), "along both sides",
          *[cylinder(x, 3, 3.3, y - 0.6, y + 0.6, axis="y") for x in np.linspace(C - 9, C + 9, pairs)
            for y in (C - 8, C + 8)])
    b.add("body", b.colour(*BRIGHT, *WOOD), "resting on the axles", box(C - 12, C + 12, C - 7, C + 7, 4, 9))
    b.add("handle", b.colour(*METAL), "sticking out at the front",
          segment((C + 12, C, 8), (C + 15, C, 13), 0.9))
    return b.finish("cart", "mechanical", "cart", seed)


@family("gear", "mechanical")
def gear(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 5, 10)
    b.add("disc", b.colour(*METAL), "lying flat", cylinder(C, C, 9, 0, 2))
    b.add("tooth", b.colour(*BRIGHT, "gold"), "around the rim",
          *[cylinder(x, y, 1.3, 0, 2) for x, y, _ in _around(n, 11)])
    b.add("axle", b.colour(*BRIGHT, "black"), "through the centre", cylinder(C, C, 2, 3, 9))
    return b.finish("gear", "mechanical", "gear", seed)


@family("windmill", "mechanical")
def windmill(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 6)
    b.add("tower", b.colour("white", "beige", "brown", "grey"), "standing upright", cone(C, C + 2, 0, 6, 26))
    hub = (C, C - 5, 19.0)
    hub_mask = cylinder(hub[0], hub[2], 2.5, C - 6, C + 1, axis="y")
    b.add("hub", b.colour(*METAL, "red"), "at the front near the top", hub_mask)
    b.add("blade", b.colour(*BRIGHT, "white"), "spread around the hub",
          *[segment((hub[0] + 3 * math.cos(a), hub[1] - 1, hub[2] + 3 * math.sin(a)),
                    (hub[0] + 11 * math.cos(a), hub[1] - 1, hub[2] + 11 * math.sin(a)), 1.0) & ~hub_mask
            for a in (math.pi / 2 + 2 * math.pi * k / n for k in range(n))])
    return b.finish("windmill", "mechanical", "windmill", seed)


@family("crane", "mechanical")
def crane(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    h = _i(rng, 18, 24)
    b.add("base", b.colour("grey", "black"), "heavy block on the ground", box(C - 6, C + 6, C - 6, C + 6, 0, 3))
    b.add("mast", b.colour("yellow", "orange", "red"), "rising from the base", box(C - 1, C + 1, C - 1, C + 1, 4, h))
    b.add("jib", b.colour("yellow", "orange", "red"), "reaching out from the top",
          box(C - 5, C + 12, C - 1, C + 1, h + 1, h + 2))
    b.add("hook", b.colour(*METAL), "hanging from the end of the jib",
          box(C + 11, C + 11, C, C, h - 6, h), ring(C + 11, C, h - 8, 1.5, 0.7, axis="y"), count=1)
    return b.finish("crane", "mechanical", "crane", seed)


@family("desk_lamp", "mechanical")
def desk_lamp(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("base", b.colour(*METAL, *BRIGHT), "flat disc on the desk", cylinder(C, C, 6, 0, 1))
    b.add("lower arm", b.colour(*METAL), "rising from the base", segment((C, C, 2), (C - 3, C, 13), 0.9))
    b.add("hinge", b.colour(*BRIGHT), "joining the two arms", ellipsoid(C - 3, C, 14.5, 1.6, 1.6, 1.6))
    b.add("upper arm", b.colour(*METAL, "white"), "leaning forward from the hinge",
          segment((C - 2, C, 16), (C + 4, C, 22), 0.9))
    b.add("shade", b.colour(*BRIGHT), "pointing down at the end", cone(C + 5, C, 22, 4, 5))
    b.add("bulb", b.colour("yellow", "white"), "glowing under the shade",
          ellipsoid(C + 5, C, 20.5, 1.2, 1.2, 1.0))
    return b.finish("desk_lamp", "mechanical", "desk lamp with a hinge", seed)


@family("fan", "mechanical")
def fan(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 6)
    b.add("base", b.colour(*METAL, "white"), "on the floor", cylinder(C, C, 6, 0, 1))
    b.add("pole", b.colour(*METAL), "standing on the base", cylinder(C, C, 1, 2, 16))
    b.add("hub", b.colour(*BRIGHT), "on top of the pole", cylinder(C, 19, 2.2, C - 2, C + 1, axis="y"))
    b.add("blade", b.colour(*BRIGHT, "white"), "radiating from the hub",
          *[segment((C + 3.5 * math.cos(a), C - 1, 19 + 3.5 * math.sin(a)),
                    (C + 9 * math.cos(a), C - 1, 19 + 9 * math.sin(a)), 1.3)
            for a in (2 * math.pi * k / n + 0.3 for k in range(n))])
    return b.finish("fan", "mechanical", "electric fan", seed)


@family("drum", "mechanical")
def drum(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 4, 8)
    b.add("shell", b.colour(*BRIGHT, "white"), "a cylinder standing on end", cylinder(C, C, 9, 0, 10))
    b.add("lug", b.colour(*METAL), "around the side of the shell",
          *[box(x - 0.5, x + 0.5, y - 0.5, y + 0.5, 4, 6) for x, y, _ in _around(n, 10)])
    b.add("drumhead", b.colour("white", "beige"), "stretched across the top", cylinder(C, C, 9, 11, 11))
    b.add("drumstick", b.colour(*WOOD), "lying on the drumhead",
          segment((C - 6, C - 3, 12.5), (C + 6, C - 5, 12.5), 0.9),
          segment((C - 6, C + 3, 12.5), (C + 6, C + 5, 12.5), 0.9))
    return b.finish("drum", "mechanical", "drum", seed)


@family("car", "mechanical")
def car(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 1, 3)
    b.add("wheel", b.colour("black", "grey"), "at the four corners",
          *[cylinder(x, 3, 3.3, y - 0.6, y + 0.6, axis="y") for x in (C - 8, C + 8) for y in (C - 7, C + 7)])
    b.add("body", b.colour(*BRIGHT), "low and long over the wheels", box(C - 13, C + 13, C - 6, C + 6, 3, 8))
    b.add("cabin", b.colour("white", "black", "grey"), "on top of the body", box(C - 6, C + 6, C - 5, C + 5, 9, 13))
    b.add("headlight", b.colour("yellow", "white"), "at the front of the body",
          *[box(C + 14, C + 14, y - 1, y + 1, 6, 7) for y in np.linspace(C - 4, C + 4, n)] if n > 1
          else [box(C + 14, C + 14, C - 1, C + 1, 6, 7)])
    return b.finish("car", "mechanical", "car", seed)


@family("helicopter", "mechanical")
def helicopter(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 5)
    b.add("skid", b.colour("black", "grey"), "along the bottom",
          box(C - 8, C + 8, C - 5, C - 4, 0, 0), box(C - 8, C + 8, C + 4, C + 5, 0, 0))
    b.add("strut", b.colour(*METAL), "connecting the skids to the body",
          *[box(x, x, y, y, 1, 6) for x in (C - 3, C + 3) for y in (C - 4.5, C + 4.5)])
    b.add("body", b.colour(*BRIGHT), "rounded cabin", ellipsoid(C, C, 8, 8, 5, 4.5))
    b.add("tail", b.colour(*BRIGHT), "boom extending backwards", segment((C - 7, C, 9), (C - 15, C, 11), 1.0))
    b.add("rotor blade", b.colour("black", "grey", "white"), "spinning above the body",
          *[segment((C + 2.5 * math.cos(a), C + 2.5 * math.sin(a), 13), (C + 13 * math.cos(a),
                     C + 13 * math.sin(a), 13), 0.8) for a in (2 * math.pi * k / n + 0.4 for k in range(n))])
    return b.finish("helicopter", "mechanical", "helicopter", seed)


# ---------------------------------------------------------------- biological & organic shapes
@family("tree", "biological")
def tree(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 5)
    b.add("trunk", b.colour("brown", "black"), "upright in the middle", cylinder(C, C, 1.6, 0, 15))
    b.add("branch", b.colour("brown", "beige", "grey"), "reaching out from the trunk",
          *[segment((C + 2.5 * math.cos(a), C + 2.5 * math.sin(a), 10), (C + 9 * math.cos(a),
                     C + 9 * math.sin(a), 17), 0.8) for _, _, a in _around(n, 1, 0.5)])
    b.add("crown", b.colour("green", "orange", "red", "yellow"), "a leafy ball on top",
          ellipsoid(C, C, 20, 6, 6, 5))
    b.add("root", b.colour("beige", "grey"), "spreading on the ground",
          *[segment((C + 3 * math.cos(a), C + 3 * math.sin(a), 0), (C + 7 * math.cos(a), C + 7 * math.sin(a), 0),
                    0.9) for _, _, a in _around(3, 1)])
    return b.finish("tree", "biological", "tree", seed)


@family("mushroom", "biological")
def mushroom(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 7)
    h = _i(rng, 8, 12)
    b.add("stem", b.colour("white", "beige"), "thick and short", cylinder(C, C, 3, 0, h))
    cap = ellipsoid(C, C, h + 1, 10, 10, 6) & box(0, 31, 0, 31, h + 1, 31)
    b.add("cap", b.colour("red", "brown", "orange", "yellow", "purple"), "a dome on the stem", cap)
    b.add("spot", b.colour("white", "yellow", "black"), "dotted over the cap",
          *[ellipsoid(x, y, h + 6.2, 1.3, 1.3, 1.2) & ~cap for x, y, _ in _around(n, 5)], count=n)
    return b.finish("mushroom", "biological", "mushroom", seed)


@family("cactus", "biological")
def cactus(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 1, 4)
    b.add("pot", b.colour("orange", "brown", "red", "white"), "holding the plant", cylinder(C, C, 6, 0, 5))
    b.add("trunk", b.colour("green", "teal"), "a tall column", cylinder(C, C, 2.5, 6, 26))
    b.add("arm", b.colour("green", "teal"), "bending upwards from the trunk",
          *[segment((C + 3.5 * math.cos(a), C + 3.5 * math.sin(a), 12 + 3 * k),
                    (C + 7 * math.cos(a), C + 7 * math.sin(a), 19 + 3 * k), 1.4)
            for k, (_, _, a) in enumerate(_around(n, 1, 0.3))])
    b.add("flower", b.colour("pink", "red", "yellow"), "blooming on the top", ellipsoid(C, C, 28, 2, 2, 1.5))
    return b.finish("cactus", "biological", "cactus", seed)


@family("flower", "biological")
def flower(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 4, 8)
    b.add("pot", b.colour("brown", "orange", "white", "grey"), "at the bottom", cylinder(C, C, 5, 0, 5))
    b.add("stem", b.colour("green", "teal"), "slender and upright", cylinder(C, C, 0.8, 6, 21))
    b.add("leaf", b.colour("green", "teal"), "on either side of the stem",
          segment((C + 1, C, 11), (C + 5, C, 14), 0.9), segment((C - 1, C, 13), (C - 5, C, 16), 0.9))
    b.add("centre", b.colour("yellow", "brown", "orange"), "at the top of the stem", ellipsoid(C, C, 23, 6.2, 6.2, 1.5))
    b.add("petal", b.colour("red", "pink", "purple", "white", "blue"), "in a ring around the centre",
          *[ellipsoid(x, y, 23, 1.3, 1.3, 1.3) for x, y, _ in _around(n, 6.8)])
    return b.finish("flower", "biological", "flower", seed)


def _quadruped(rng: np.random.Generator, seed: int, name: str, noun: str, colours: tuple[str, ...]) -> WorldSample:
    b = Builder(rng)
    leg = _i(rng, 4, 7)
    b.add("leg", b.colour(*colours), "under the body at the four corners",
          *[cylinder(x, y, 1.1, 0, leg) for x in (C - 6, C + 6) for y in (C - 3, C + 3)])
    b.add("body", b.colour(*colours), "horizontal on the legs", ellipsoid(C, C, leg + 4, 9, 4.5, 4))
    b.add("head", b.colour(*colours), "at the front, raised", ellipsoid(C + 10, C, leg + 9, 3.5, 3, 3))
    b.add("tail", b.colour(*colours), "at the back", segment((C - 9, C, leg + 5), (C - 13, C, leg + 10), 0.9))
    b.add("eye", b.colour("black", "white"), "on the head",
          box(C + 13, C + 13, C - 2, C - 1.5, leg + 10, leg + 10), box(C + 13, C + 13, C + 1.5, C + 2,
                                                                       leg + 10, leg + 10))
    return b.finish(name, "biological", noun, seed)


@family("dog", "biological")
def dog(rng: np.random.Generator, seed: int) -> WorldSample:
    return _quadruped(rng, seed, "dog", "dog", ("brown", "black", "white", "beige", "grey", "gold"))


@family("horse", "biological")
def horse(rng: np.random.Generator, seed: int) -> WorldSample:
    return _quadruped(rng, seed, "horse", "horse", ("brown", "black", "white", "grey", "beige"))


def _bug(rng: np.random.Generator, seed: int, name: str, noun: str, legs: int) -> WorldSample:
    b = Builder(rng)
    body = b.colour("black", "brown", "red", "green", "purple")
    b.add("body", body, "low over the legs", ellipsoid(C, C, 5, 6, 4, 3))
    b.add("head", b.colour("black", "brown", "red", "orange"), "at the front", ellipsoid(C + 8, C, 7, 2.5, 2.5, 2.5))
    per = legs // 2
    xs = np.linspace(C - 1.6 * per, C + 1.6 * per, per)
    b.add("leg", b.colour(*BRIGHT, "grey", "black"), f"{per} on each side",
          *[segment((x, C + s * 2, 4), (x + (x - C) * 0.3, C + s * 10, 0), 0.9) for x in xs for s in (-1, 1)])
    b.add("eye", b.colour("white", "yellow", "red"), "on the head",
          box(C + 10, C + 10, C - 1.5, C - 1, 8, 8), box(C + 10, C + 10, C + 1, C + 1.5, 8, 8))
    return b.finish(name, "biological", noun, seed)


@family("spider", "biological")
def spider(rng: np.random.Generator, seed: int) -> WorldSample:
    return _bug(rng, seed, "spider", "spider", 8)


@family("insect", "biological")
def insect(rng: np.random.Generator, seed: int) -> WorldSample:
    return _bug(rng, seed, "insect", "beetle", 6)


@family("snake", "biological")
def snake(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    waves = _i(rng, 1, 3)
    pts = [(C - 13 + t, C + 6 * math.sin(waves * math.pi * t / 24), 1.5) for t in np.linspace(0, 24, 40)]
    b.add("body", b.colour("green", "yellow", "orange", "brown", "teal"), "winding along the ground",
          np.logical_or.reduce([segment(p, q, 1.6) for p, q in zip(pts, pts[1:])]), count=1)
    b.add("head", b.colour("green", "yellow", "brown", "black"), "raised at the front",
          ellipsoid(C + 13, C, 5, 2.5, 2.2, 2.5))
    b.add("eye", b.colour("black", "red", "white"), "on top of the head",
          box(C + 14, C + 14, C - 1.5, C - 1, 7, 7), box(C + 14, C + 14, C + 1, C + 1.5, 7, 7))
    return b.finish("snake", "biological", "snake", seed)


@family("fish", "biological")
def fish(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("stand", b.colour("black", "grey", "brown"), "a base with a rod", cylinder(C, C, 5, 0, 1))
    b.add("rod", b.colour(*METAL), "holding the fish up", cylinder(C, C, 0.8, 2, 10))
    b.add("body", b.colour(*BRIGHT), "an elongated oval", ellipsoid(C, C, 15, 9, 3, 5))
    b.add("tail", b.colour(*BRIGHT), "forked at the back", segment((C - 9, C, 15), (C - 14, C, 19), 1.0) | segment((C - 9, C, 15), (C - 14, C, 11), 1.0), count=1)
    xs = np.linspace(C - 4, C + 4, n)
    b.add("fin", b.colour(*BRIGHT, "white"), "along the back",
          *[segment((x, C, 20), (x - 1, C, 23), 0.8) for x in xs])
    return b.finish("fish", "biological", "fish", seed)


@family("bird", "biological")
def bird(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("foot", b.colour("orange", "yellow", "black"), "flat on the ground",
          box(C - 2, C + 2, C - 4, C - 2, 0, 0), box(C - 2, C + 2, C + 2, C + 4, 0, 0))
    b.add("leg", b.colour("orange", "yellow", "grey"), "thin, under the body",
          cylinder(C, C - 3, 1.0, 1, 6), cylinder(C, C + 3, 1.0, 1, 6))
    b.add("body", b.colour(*BRIGHT, "white", "black"), "round", ellipsoid(C, C, 11, 7, 5, 5))
    b.add("wing", b.colour(*BRIGHT, "white", "black"), "folded on the sides",
          ellipsoid(C - 1, C - 5.5, 12, 4, 1, 2.5), ellipsoid(C - 1, C + 5.5, 12, 4, 1, 2.5))
    b.add("head", b.colour(*BRIGHT, "white", "black"), "on top at the front", ellipsoid(C + 5, C, 18, 3, 3, 3))
    b.add("beak", b.colour("orange", "yellow"), "pointing forward", segment((C + 8, C, 18), (C + 11, C, 18), 0.8))
    return b.finish("bird", "biological", "bird", seed)


# ---------------------------------------------------------------- world-knowledge rare objects
def _lathe(profile: list[tuple[float, float, float]]) -> np.ndarray:
    """Union of stacked discs (z0, z1, radius) around the centre line: a turned (lathe) solid."""
    return np.logical_or.reduce([cylinder(C, C, r, z0, z1) for z0, z1, r in profile])


@family("chess_pawn", "world-knowledge")
def chess_pawn(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    col = b.colour("white", "black", "beige", "brown")
    b.add("base", col, "wide and round at the bottom", _lathe([(0, 2, 8), (3, 3, 6.5)]))
    b.add("collar", b.colour("gold", "grey", "red"), "a disc in the middle", cylinder(C, C, 5, 10, 11))
    b.add("neck", b.colour("white", "black", "beige", "brown"), "tapering up from the base",
          cone(C, C, 4, 4.5, 12) & box(0, 31, 0, 31, 4, 9))
    b.add("head", b.colour("white", "black", "beige", "brown"), "a sphere on top", ellipsoid(C, C, 15, 4, 4, 4))
    return b.finish("chess_pawn", "world-knowledge", "chess pawn", seed, style="")


@family("chess_rook", "world-knowledge")
def chess_rook(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 4, 6)
    b.add("base", b.colour("white", "black", "beige", "brown"), "wide at the bottom", cylinder(C, C, 8, 0, 3))
    b.add("tower", b.colour("white", "black", "beige", "brown"), "a straight column", cylinder(C, C, 5, 4, 17))
    b.add("crenellation", b.colour("white", "black", "grey", "gold"), "in a ring on top",
          *[cylinder(x, y, 1.4, 18, 21) for x, y, _ in _around(n, 4.5)])
    return b.finish("chess_rook", "world-knowledge", "chess rook", seed)


@family("chess_king", "world-knowledge")
def chess_king(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("base", b.colour("white", "black", "beige", "brown"), "wide at the bottom", cylinder(C, C, 8, 0, 3))
    b.add("body", b.colour("white", "black", "beige", "brown"), "tall and tapered",
          cone(C, C, 4, 5, 30) & box(0, 31, 0, 31, 4, 20))
    b.add("crown", b.colour("gold", "grey", "red"), "a ring near the top", cylinder(C, C, 4.5, 21, 23))
    b.add("cross", b.colour("gold", "red", "grey"), "on the very top",
          box(C - 0.5, C + 0.5, C - 0.5, C + 0.5, 24, 30) | box(C - 2.5, C + 2.5, C - 0.5, C + 0.5, 27, 28), count=1)
    return b.finish("chess_king", "world-knowledge", "chess king", seed)


def _string_instrument(rng: np.random.Generator, seed: int, name: str, noun: str, waist: float,
                       strings: tuple[int, int]) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, *strings)
    b.add("stand", b.colour("black", "grey"), "a low block holding the instrument upright",
          box(C - 7, C + 7, C - 4, C + 4, 0, 2))
    b.add("body", b.colour("brown", "red", "orange", "black", "blue", "green"), "lower and upper bouts",
          ellipsoid(C, C, 7, 7, 2, 5) | ellipsoid(C, C, 14, waist, 2, 4), count=1)
    b.add("neck", b.colour("brown", "beige", "black", "yellow"), "long and thin above the body",
          box(C - 1, C + 1, C - 1, C + 0, 18, 26))
    b.add("string", b.colour("white", "grey", "gold"), "running along the body",
          *[box(x, x, 13, 13, 4, 16) for x in range(16 - n, 16 + n, 2)])
    b.add("headstock", b.colour("black", "brown", "white"), "at the end of the neck",
          box(C - 2, C + 2, C - 1, C + 0, 27, 29))
    return b.finish(name, "world-knowledge", noun, seed)


@family("guitar", "world-knowledge")
def guitar(rng: np.random.Generator, seed: int) -> WorldSample:
    return _string_instrument(rng, seed, "guitar", "guitar on a stand", 5.5, (4, 6))


@family("violin", "world-knowledge")
def violin(rng: np.random.Generator, seed: int) -> WorldSample:
    return _string_instrument(rng, seed, "violin", "violin on a stand", 4.0, (3, 4))


@family("trumpet", "world-knowledge")
def trumpet(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("stand", b.colour("black", "grey"), "a base under the trumpet", box(C - 9, C + 9, C - 3, C + 3, 0, 3))
    b.add("tube", b.colour("gold", "grey", "yellow"), "a long pipe", cylinder(C, 5, 1.3, C - 12, C + 8, axis="x"))
    b.add("bell", b.colour("gold", "yellow", "orange"), "flaring at the end",
          cylinder(C, 5, 2.2, C + 9, C + 11, axis="x") | cylinder(C, 5, 3.2, C + 11, C + 13, axis="x"), count=1)
    b.add("valve", b.colour("grey", "white", "black"), "standing on top of the tube",
          *[cylinder(x, C, 0.8, 7, 10) for x in range(11, 11 + 3 * n, 3)])
    return b.finish("trumpet", "world-knowledge", "trumpet", seed)


@family("lighthouse", "world-knowledge")
def lighthouse(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("tower", b.colour("white", "beige"), "a tapering column", cone(C, C, 0, 6, 40) & box(0, 31, 0, 31, 0, 22))
    seam = box(C - 0.5, C + 0.5, C, 31, 0, 31)  # the bands leave a strip at the back, where the tower shows through
    b.add("stripe", b.colour("red", "blue", "black"), "banded around the tower, open at the back",
          *[cone(C, C, 0, 6.2, 40) & ~cone(C, C, 0, 4.5, 40) & box(0, 31, 0, 31, 3 + 6 * k, 5 + 6 * k) & ~seam
            for k in range(n)])
    b.add("lantern", b.colour("yellow", "gold"), "glass room on top", cylinder(C, C, 2.5, 23, 26))
    b.add("roof", b.colour("black", "red", "grey"), "a cone over the lantern", cone(C, C, 27, 3.5, 4))
    return b.finish("lighthouse", "world-knowledge", "lighthouse", seed)


@family("pagoda", "world-knowledge")
def pagoda(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("storey", b.colour("red", "white", "beige"), "stacked and shrinking upwards",
          *[box(C - 6 + k, C + 6 - k, C - 6 + k, C + 6 - k, 6 * k, 6 * k + 3) for k in range(n)])
    b.add("roof", b.colour("green", "black", "teal", "blue"), "with wide eaves above each storey",
          *[box(C - 9 + k, C + 9 - k, C - 9 + k, C + 9 - k, 6 * k + 4, 6 * k + 4)
            | box(C - 7 + k, C + 7 - k, C - 7 + k, C + 7 - k, 6 * k + 5, 6 * k + 5) for k in range(n)])
    b.add("finial", b.colour("gold", "yellow"), "a spire on the top", cylinder(C, C, 0.8, 6 * n, 6 * n + 4))
    return b.finish("pagoda", "world-knowledge", "pagoda", seed)


@family("sundial", "world-knowledge")
def sundial(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 4, 12)
    b.add("pedestal", b.colour("grey", "white", "beige"), "a short column", cylinder(C, C, 4, 0, 8))
    b.add("dial", b.colour("gold", "beige", "white", "grey"), "a flat disc on the pedestal", cylinder(C, C, 10, 9, 9))
    b.add("hour mark", b.colour("black", "brown", "blue"), "around the rim of the dial",
          *[box(round(x), round(x), round(y), round(y), 10, 10) for x, y, _ in _around(n, 8.5)])
    b.add("gnomon", b.colour("black", "gold", "brown"), "a triangular fin casting the shadow",
          segment((C - 4, C, 10), (C + 2, C, 15), 0.9) | box(C - 4, C + 2, C, C, 10, 10), count=1)
    return b.finish("sundial", "world-knowledge", "sundial", seed)


# ---------------------------------------------------------------- stylized representation
@family("lowpoly_tree", "stylized")
def lowpoly_tree(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    trunk = box(C - 2, C + 2, C - 2, C + 2, 0, 4) | box(C - 0.5, C + 0.5, C - 0.5, C + 0.5, 5, 5 + 7 * (n - 1))
    b.add("trunk", b.colour("brown", "beige"), "a short block with a pole up through the tiers", trunk)
    slot = box(C - 0.5, C + 0.5, 0, C - 1.5, 0, 31)  # in front of the pole, which shows through every tier
    b.add("cone tier", b.colour("green", "teal", "white"), "stacked and shrinking around the trunk",
          *[cone(C, C, 5 + 7 * k, 9 - 2 * k, 6) & ~trunk & ~slot for k in range(n)])
    return b.finish("lowpoly_tree", "stylized", "pine tree", seed, style="low-poly")


@family("toy_robot", "stylized")
def toy_robot(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("leg", b.colour(*METAL, "blue"), "two blocks to stand on",
          box(C - 4, C - 2, C - 2, C + 2, 0, 8), box(C + 2, C + 4, C - 2, C + 2, 0, 8))
    b.add("torso", b.colour(*BRIGHT), "a box on the legs", box(C - 5, C + 5, C - 3, C + 3, 9, 18))
    b.add("arm", b.colour(*METAL, *BRIGHT), "hanging at the sides",
          box(C - 7, C - 6, C - 1, C + 1, 10, 17), box(C + 6, C + 7, C - 1, C + 1, 10, 17))
    b.add("head", b.colour(*METAL, *BRIGHT), "a cube on the torso", box(C - 3, C + 3, C - 3, C + 3, 19, 24))
    b.add("eye", b.colour("red", "yellow", "blue", "green"), "on the face",
          box(C - 2, C - 1, C - 4, C - 4, 22, 22), box(C + 1, C + 2, C - 4, C - 4, 22, 22))
    b.add("antenna", b.colour("red", "yellow", "black"), "on top of the head", cylinder(C, C, 1.0, 25, 28))
    return b.finish("toy_robot", "stylized", "robot", seed, style="toy")


@family("cartoon_snowman", "stylized")
def cartoon_snowman(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("body", b.colour("white"), "two stacked snowballs",
          ellipsoid(C, C, 6, 7, 7, 6.5) | ellipsoid(C, C, 16, 5, 5, 5), count=1)
    b.add("head", b.colour("white", "beige", "grey"), "a small ball on top", ellipsoid(C, C, 24, 3.6, 3.6, 3.6))
    b.add("button", b.colour("black", "blue", "red"), "down the front",
          *[ellipsoid(C - 5, C, z, 0.9, 0.9, 0.9) for z in np.linspace(12.5, 19.5, n).round()])
    b.add("nose", b.colour("orange"), "a carrot on the face", segment((C - 3, C, 24), (C - 7, C, 24), 0.9))
    b.add("hat", b.colour("black", "red", "blue"), "on the head", cylinder(C, C, 2.5, 27, 30) |
          cylinder(C, C, 4, 27, 27), count=1)
    return b.finish("cartoon_snowman", "stylized", "snowman", seed, style="cartoon")


@family("toy_train", "stylized")
def toy_train(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 1, 2)
    length = 30 / (n + 1)
    starts = [1 + k * length for k in range(n + 1)]
    b.add("wheel", b.colour("black", "grey"), "under every car",
          *[cylinder(x + off, 1.5, 1.8, y - 0.5, y + 0.5, axis="y") for x in starts for off in (2, length - 4)
            for y in (C - 4, C + 4)])
    b.add("engine", b.colour("red", "blue", "green"), "at the front with a chimney",
          box(starts[-1], starts[-1] + length - 2, C - 3, C + 3, 2, 9) |
          cylinder(starts[-1] + length - 5, C, 1.2, 10, 13), count=1)
    b.add("wagon", b.colour("yellow", "orange", "teal", "purple"), "pulled behind the engine",
          *[box(x, x + length - 2, C - 3, C + 3, 2, 6) for x in starts[:-1]])
    return b.finish("toy_train", "stylized", "train", seed, style="toy")


@family("toy_duck", "stylized")
def toy_duck(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("wheel", b.colour("black", "red", "blue"), "at the four corners",
          *[cylinder(x, 2, 2.3, y - 0.5, y + 0.5, axis="y") for x in (C - 5, C + 5) for y in (C - 2.5, C + 2.5)])
    b.add("body", b.colour("yellow", "white", "orange"), "a fat oval", ellipsoid(C, C, 8, 8, 5, 5))
    b.add("head", b.colour("yellow", "white", "orange"), "on top at the front", ellipsoid(C + 5, C, 16, 3.5, 3.5, 3.5))
    b.add("beak", b.colour("orange", "red"), "flat and forward", box(C + 8, C + 11, C - 1, C + 1, 15, 16))
    b.add("eye", b.colour("black", "blue"), "on both sides of the head",
          box(C + 6, C + 6, C - 3.5, C - 3.5, 17, 17), box(C + 6, C + 6, C + 3.5, C + 3.5, 17, 17))
    return b.finish("toy_duck", "stylized", "duck on wheels", seed, style="toy")


@family("cartoon_house", "stylized")
def cartoon_house(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("wall", b.colour("white", "beige", "yellow", "pink"), "a box", box(C - 9, C + 9, C - 7, C + 7, 0, 11))
    b.add("roof", b.colour("red", "brown", "blue", "black"), "a pyramid on the walls", cone(C, C, 12, 13, 10))
    b.add("door", b.colour("brown", "green", "black"), "in the middle of the front", box(C - 1, C + 1, C - 8, C - 8, 0, 5))
    b.add("window", b.colour("blue", "teal", "yellow"), "across the front",
          *[box(x - 1, x + 1, C - 8, C - 8, 7, 9) for x in np.linspace(C - 6, C + 6, n)])
    b.add("chimney", b.colour("grey", "black", "brown"), "on the roof", box(C + 4, C + 6, C + 1, C + 3, 16, 21))
    return b.finish("cartoon_house", "stylized", "house", seed, style="cartoon")


@family("toy_rocket", "stylized")
def toy_rocket(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 3, 5)
    b.add("fin", b.colour("red", "blue", "black"), "around the base",
          *[segment((x, y, 0), (C + (x - C) * 0.5, C + (y - C) * 0.5, 7), 1.0) for x, y, _ in _around(n, 8)])
    b.add("body", b.colour("white", "grey", "yellow"), "a tall cylinder", cylinder(C, C, 4, 2, 20))
    b.add("window", b.colour("teal", "blue"), "a porthole", ellipsoid(C, C - 4, 15, 1.5, 1, 1.5))
    b.add("nose cone", b.colour("red", "orange", "black", "blue"), "on top", cone(C, C, 21, 4, 8))
    return b.finish("toy_rocket", "stylized", "rocket", seed, style="toy")


@family("voxel_cat", "stylized")
def voxel_cat(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    b.add("leg", b.colour("orange", "black", "white", "grey"), "four blocks",
          *[box(x - 1, x + 1, y - 1, y + 1, 0, 4) for x in (C - 5, C + 5) for y in (C - 3, C + 3)])
    b.add("body", b.colour("orange", "black", "white", "grey"), "a block", box(C - 7, C + 7, C - 4, C + 4, 5, 10))
    b.add("head", b.colour("orange", "black", "white", "grey"), "a cube at the front",
          box(C + 5, C + 11, C - 4, C + 4, 11, 16))
    b.add("ear", b.colour("pink", "black", "white"), "pointed on top of the head",
          box(C + 7, C + 9, C - 4, C - 2, 17, 19), box(C + 7, C + 9, C + 2, C + 4, 17, 19))
    b.add("tail", b.colour("orange", "black", "white", "grey"), "sticking up at the back",
          box(C - 9, C - 8, C - 0.5, C + 0.5, 8, 17))
    return b.finish("voxel_cat", "stylized", "cat", seed, style="voxel")


@family("abstract_totem", "stylized")
def abstract_totem(rng: np.random.Generator, seed: int) -> WorldSample:
    b = Builder(rng)
    n = _i(rng, 2, 4)
    b.add("block", b.colour(*BRIGHT), "stacked with spacers", *[box(C - 4, C + 4, C - 4, C + 4, 6 * k, 6 * k + 3)
                                                                for k in range(n)])
    b.add("spacer", b.colour("black", "white", "grey"), "a thin disc between blocks",
          *[cylinder(C, C, 2.5, 6 * k + 4, 6 * k + 5) for k in range(n)])
    b.add("sphere", b.colour("gold", *BRIGHT), "crowning the stack", ellipsoid(C, C, 6 * n + 2, 3, 3, 3))
    return b.finish("abstract_totem", "stylized", "totem", seed, style="abstract")
