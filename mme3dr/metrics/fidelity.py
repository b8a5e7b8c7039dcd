"""Kernel and Frechet distances between two sets of image features (through torch-fidelity).

KID (Kernel Inception Distance when the features are Inception's): the unbiased estimate of MMD^2 with the
cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, d the feature dimension,

    MMD^2_u = 1/(m(m-1)) sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i,j} k(x_i, y_j),

averaged over ``subsets`` random subsets of ``subset_size`` samples drawn without replacement from each set
(numpy RandomState(seed)); the mean and standard deviation over subsets are returned. Reported x100 in tables.

Subset size: torch-fidelity's default (1000) is larger than a category of MME-3DR (40-64 objects x 24 views =
960-1536 images). The default here is ``min(1000, floor(min(n_a, n_b) / 2))``, so subsets differ from each other
and the std is informative, with 100 subsets and seed 2020 (torch-fidelity's).

FID: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of the feature means and covariances. With fewer
samples than dimensions (2048 for Inception) the covariances are rank-deficient and FID is biased upwards;
compare FIDs only between sets of the same size.
"""

from __future__ import annotations

import numpy as np
import torch

KID_SUBSETS = 100
KID_SEED = 2020
KID_MAX_SUBSET = 1000


def default_subset_size(n_a: int, n_b: int) -> int:
    return max(2, min(KID_MAX_SUBSET, min(n_a, n_b) // 2))


def _check(a: np.ndarray, b: np.ndarray, need: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < need:
        raise ValueError(f"need at least {need} samples in each set, got {len(a)} and {len(b)}")


def kid_from_features(a: np.ndarray, b: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int | None = None,
                      degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                      seed: int = KID_SEED) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets (see module docstring)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    subset_size = subset_size or default_subset_size(len(a), len(b))
    _check(a, b, max(2, subset_size))
    out = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                 kid_subset_size=subset_size, kid_kernel="poly", kid_kernel_poly_degree=degree,
                                 kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0, rng_seed=seed,
                                 verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the two feature sets (see module docstring)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check(a, b, 2)
    stats = [fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID])
