"""The five MME-3DR reasoning categories (paper arXiv 2512.10949, Figure 4 counts)."""

from __future__ import annotations

from dataclasses import dataclass

from mme3dr.errors import InputError


@dataclass(frozen=True)
class Category:
    key: str
    name: str
    count: int
    definition: str


CATEGORIES: dict[str, Category] = {
    c.key: c
    for c in (
        Category("spatial", "Spatial & Structural Geometry", 40,
                 "complex spatial layouts and component arrangements"),
        Category("mechanical", "Mechanical Affordances", 54,
                 "physical functionality or interactive mechanical components"),
        Category("biological", "Biological & Organic Shapes", 53,
                 "animals and plants with organic, non-rigid form"),
        Category("world-knowledge", "World-Knowledge Rare Objects", 38,
                 "low-frequency concepts needing real-world knowledge"),
        Category("stylized", "Stylized Representation", 64,
                 "non-photorealistic forms: cartoon, abstract, low-poly, toy-like"),
    )
}

#: Checklist question types a VLM judge answers from renders.
CHECK_TYPES: tuple[str, ...] = ("part", "count", "colour", "material", "relation", "pose", "style", "function")


def resolve_category(name: str) -> str:
    """Map a key (``world-knowledge``), an underscore variant or a display name to the canonical key."""
    norm = name.strip().lower().replace("_", "-")
    for c in CATEGORIES.values():
        if norm in (c.key, c.name.lower()):
            return c.key
    from mme3dr.registry import did_you_mean

    raise InputError(f"unknown category {name!r}.{did_you_mean(norm, CATEGORIES)} "
                     f"Known categories: {', '.join(CATEGORIES)}.")
