"""Metrics: CLIP score, Kernel/Frechet distances, VLM judgments, geometry checks, ar3d-r1-compat numbers.

Functional API for distances on features: :func:`kid_from_features` (mean, std) and :func:`fid_from_features`.
"""

from mme3dr.metrics.base import MetricResult, PromptMetric, ScoreItem
from mme3dr.metrics.fidelity import fid_from_features, kid_from_features
from mme3dr.metrics.scoring import PROMPT_METRICS, SET_METRICS, ScoreOptions, score_run
from mme3dr.metrics.weights import MissingWeightsError

__all__ = ["PROMPT_METRICS", "SET_METRICS", "MetricResult", "MissingWeightsError", "PromptMetric", "ScoreItem",
           "ScoreOptions", "fid_from_features", "kid_from_features", "score_run"]
