"""Metrics: CLIP score, Kernel/Frechet distances, VLM judgments, geometry checks, ar3d-r1-compat numbers.

The metric implementations only: which names exist is the registry in :mod:`mme3dr.metrics.specs`; running them
over a run folder is the scoring stage, :mod:`mme3dr.scoring`.

Functional API for distances on multi-view features (rows = views, ``objects`` = the object of each row):
:func:`kid_by_object` (the main, object-aware KID with a bootstrap over objects), :func:`fid_by_object` (FID at a
fixed number of generated objects, and on all views), :func:`fid_from_features` (FID of two sets of rows) and
:func:`kid_from_features` (the pooled, paper-style KID: mean and std over subsets).
"""

from mme3dr.metrics.base import MetricResult, PromptMetric, ScoreItem

_FIDELITY = ("FIDEstimate", "KIDEstimate", "fid_by_object", "fid_from_features", "kid_by_object", "kid_from_features")
__all__ = ["MetricResult", "PromptMetric", "ScoreItem", *_FIDELITY]


def __getattr__(name: str):
    """The distance functions, imported on first use: they need torch, which the geometry worker processes do not
    (importing it would add seconds to every worker's start)."""
    if name in _FIDELITY:
        from mme3dr.metrics import fidelity

        return getattr(fidelity, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
