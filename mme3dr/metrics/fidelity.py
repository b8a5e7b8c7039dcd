"""Kernel and Frechet distances between two sets of multi-view image features.

A feature set has one row per rendered view; ``objects`` labels each row with the object it shows (the 24 views of
one object share a label). Views of one object are alike, so they are not independent samples, and both distances
have to take that into account.

**Main KID** (:func:`kid_by_object`). With the polynomial kernel k(x, y) = (gamma x.y + coef0)^degree (defaults
gamma = 1/d, coef0 = 1, degree 3: (x.y/d + 1)^3, d the feature width), sets X (objects o with views V_o, N_X views
in all) and Y, and the object-pair kernel sums S_XX[o, p] = sum_{i in V_o, j in V_p} k(x_i, x_j) (likewise S_YY,
S_XY):

    K_XX = sum_{o != p} S_XX[o, p] / sum_{o != p} |V_o| |V_p|        (pairs of views of two *different* objects)
    K_YY = the same for Y,      K_XY = sum_{o, q} S_XY[o, q] / (N_X N_Y)
    KID  = K_XX + K_YY - 2 K_XY

When objects are drawn independently this is an unbiased estimate (a U-statistic over objects) of MMD^2 between the
two *view* distributions: every within-set term pairs views of two independent objects. The pooled estimator
below also pairs two views of one object, whose kernel value is larger because the views are alike; that biases
it upwards by about (v - 1) / (N - 1) * (E k(same object) - E k(different objects)) per set (v views per object):
of order 1/objects, and larger for a *more* view-consistent generator, which inverts rankings.
With the same number of views per object, this full-set value equals the average of the same statistic over every
subset of objects of any size: it is the limit of torch-fidelity's subset averaging with subsets drawn by object,
so no random subsets are drawn. A set with more than ``max_objects`` objects is reduced to a random subset of
``max_objects`` objects (drawn by object, ``seed``), which bounds the O(views^2) kernel cost.

Uncertainty: a bootstrap over objects. Each of ``bootstrap`` replicates resamples the objects of each set with
replacement (independently for the two sets, ``numpy.random.default_rng(seed)``) and recomputes the statistic
with multiplicity weights, again leaving out every pair of views of one original object. ``se`` is the standard
deviation of the replicates and the 95% interval their 2.5th and 97.5th percentiles. Both sets are samples, so
both are resampled. When the two distributions are (nearly) equal the bootstrap spread is larger than the true
sampling spread (measured over 60 seeds on synthetic clustered features like those of ``tests/test_fidelity.py``:
about 1.6x at 38 objects, 1.3x with a small shift): the interval is conservative there, not too narrow.

**Pooled, paper-style KID** (:func:`kid_from_features`): every view is an independent sample; the unbiased
MMD^2 averaged over ``subsets`` random subsets of ``subset_size`` views of each set, through torch-fidelity
(seed 2020). It returns the mean and the standard deviation *over subsets*, a spread, not an interval. Kept for
comparison with published tables (the evident reading of how the paper computed KD); do not rank multi-view
generators with it.

**FID** (:func:`fid_from_features`): ||mu_X - mu_Y||^2 + Tr S_X + Tr S_Y - 2 Tr (S_X S_Y)^(1/2) of the feature
means and covariances. Tr (S_X S_Y)^(1/2) is computed exactly as ||M_X M_Y^T||_* / sqrt((N_X - 1)(N_Y - 1)), M the
centred features (or the R factor of their QR decomposition when N > d): the nonzero eigenvalues of S_X S_Y are
the squared singular values of M_X M_Y^T. This is the value scipy's ``sqrtm`` gives (what torch-fidelity uses) up to
round-off, exact for rank-deficient covariances and about 20x faster at d = 2048.
FID depends on the number of samples (with fewer views than dimensions the covariances are rank-deficient and FID
is biased upwards), so the headline value (:func:`fid_by_object`) is computed at a fixed number of *generated*
objects: the mean over ``draws`` random subsets of ``n_objects`` generated objects (all their views, drawn by
object, ``seed``) against all reference views. A set with fewer objects is used whole, and the number used is
recorded with the value. Compare FIDs only between runs with the same counts and the same reference set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mme3dr.defaults import DEFAULTS

#: Kernel matrix elements held at once while summing over object pairs (64 MB of float64).
_BLOCK_ELEMENTS = 1 << 23
#: Rows of a feature set converted to float64 at once while fitting a Gaussian (memory stays flat in the views).
_FIT_ROWS = 8192


def default_subset_size(n_a: int, n_b: int) -> int:
    """Views per subset of the pooled KID: ``min(1000, floor(min(n_a, n_b) / 2))`` (at least 2)."""
    return max(2, min(DEFAULTS.kid_pooled_max_subset, min(n_a, n_b) // 2))


def _check(a: np.ndarray, b: np.ndarray, need: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < need:
        raise ValueError(f"need at least {need} samples in each set, got {len(a)} and {len(b)}")


@dataclass(frozen=True)
class ObjectSet:
    """A feature set with rows sorted so that each object's views are contiguous."""

    features: np.ndarray  # (N, d) float64, or float32 as given (then converted where used: the same values)
    views: np.ndarray  # (O,) views per object, in row order
    ids: np.ndarray  # (O,) object labels, in row order

    @classmethod
    def of(cls, features: np.ndarray, objects: Sequence | np.ndarray) -> ObjectSet:
        x = np.asarray(features)
        x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
        labels = np.asarray(objects)
        if x.ndim != 2 or labels.shape != (len(x),):
            raise ValueError(f"need one object label per feature row: features {x.shape}, labels {labels.shape}")
        ids, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        return cls(x[order], np.bincount(inverse, minlength=len(ids)), ids)

    @property
    def n_objects(self) -> int:
        return len(self.views)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.views)[:-1]]).astype(int)

    def subset(self, objects: np.ndarray) -> ObjectSet:
        """The set restricted to the objects at positions ``objects`` (kept in their row order)."""
        objects = np.sort(np.asarray(objects, int))
        rows = np.concatenate([np.arange(s, s + v) for s, v in zip(self.starts[objects], self.views[objects])])
        return ObjectSet(self.features[rows], self.views[objects], self.ids[objects])


def object_kernel_sums(x: ObjectSet, y: ObjectSet, gamma: float, coef0: float, degree: int) -> np.ndarray:
    """S[o, q] = sum over views i of object o of x and j of object q of y of (gamma x_i.y_j + coef0)^degree."""
    out = np.empty((x.n_objects, y.n_objects))
    ys = y.starts
    per_block = max(1, _BLOCK_ELEMENTS // max(1, len(y.features)))
    o = 0
    while o < x.n_objects:
        rows = np.cumsum(x.views[o:])
        stop = o + max(1, int(np.searchsorted(rows, per_block, side="right")))
        lo, hi = x.starts[o], x.starts[o] + rows[stop - o - 1]
        k = (gamma * (x.features[lo:hi] @ y.features.T) + coef0) ** degree
        by_col = np.add.reduceat(k, ys, axis=1)
        out[o:stop] = np.add.reduceat(by_col, x.starts[o:stop] - lo, axis=0)
        o = stop
    return out


def _within(s: np.ndarray, views: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean kernel over pairs of views of different objects, for weight rows ``w`` (B, O) of object multiplicities."""
    num = np.einsum("bo,bo->b", w @ s, w) - (w * w) @ np.diagonal(s)
    den = (w @ views) ** 2 - (w * w) @ (views.astype(float) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def kid_terms(s_aa: np.ndarray, s_bb: np.ndarray, s_ab: np.ndarray, views_a: np.ndarray, views_b: np.ndarray,
              w_a: np.ndarray, w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_XX, K_YY, K_XY) for each row of object weights ``w_a`` (B, O_a) and ``w_b`` (B, O_b): the statistic of
    the sets in which object o appears w[o] times, pairs of views of one original object left out (weights of 1:
    the sets themselves; multinomial weights: a bootstrap replicate)."""
    kxy = np.einsum("bo,bo->b", w_a @ s_ab, w_b) / ((w_a @ views_a) * (w_b @ views_b))
    return _within(s_aa, views_a, w_a), _within(s_bb, views_b, w_b), kxy


@dataclass(frozen=True)
class KIDEstimate:
    """The object-aware KID of :func:`kid_by_object` (raw MMD^2; tables show it x100)."""

    value: float  # K_XX + K_YY - 2 K_XY
    se: float  # standard deviation of the bootstrap replicates (over objects)
    ci_low: float  # 2.5th percentile of the bootstrap replicates
    ci_high: float  # 97.5th percentile
    k_xx: float
    k_yy: float
    k_xy: float
    objects_a: int
    views_a: int
    objects_b: int
    views_b: int
    bootstrap: int
    seed: int


class ObjectKernel:
    """Object-pair kernel sums of a pool of objects, computed once; the KID of any two disjoint groups of them.

    Scoring compares the generated set and several reference subsets overall and per category: every one of
    those KIDs is a sub-block of the pool's sums, so the O(views^2) kernel work is done once.
    """

    def __init__(self, features: np.ndarray, objects: Sequence | np.ndarray, degree: int = 3,
                 gamma: float | None = None, coef0: float = 1.0) -> None:
        pool = ObjectSet.of(features, objects)
        pool = dataclasses.replace(pool, features=np.asarray(pool.features, np.float64))  # sorted, then float64
        gamma = 1.0 / pool.features.shape[1] if gamma is None else gamma
        self.ids, self.views = pool.ids, pool.views
        self.index = {k: i for i, k in enumerate(pool.ids.tolist())}
        self.sums = object_kernel_sums(pool, pool, gamma, coef0, degree)

    def _positions(self, objects: Sequence) -> np.ndarray:
        missing = [o for o in objects if o not in self.index]
        if missing:
            raise KeyError(f"objects not in the kernel pool: {missing[:5]}")
        return np.array([self.index[o] for o in dict.fromkeys(objects)], int)

    def kid(self, objects_a: Sequence, objects_b: Sequence, bootstrap: int = DEFAULTS.kid_bootstrap,
            seed: int = DEFAULTS.kid_seed) -> KIDEstimate:
        """Object-aware KID between two disjoint groups of pool objects, with its bootstrap over objects."""
        pa, pb = self._positions(objects_a), self._positions(objects_b)
        if min(len(pa), len(pb)) < 2:
            raise ValueError(f"need at least 2 objects in each set, got {len(pa)} and {len(pb)}")
        if np.intersect1d(pa, pb).size:
            raise ValueError("the two sets share objects; KID compares two disjoint sets")
        s_aa, s_bb, s_ab = self.sums[np.ix_(pa, pa)], self.sums[np.ix_(pb, pb)], self.sums[np.ix_(pa, pb)]
        va, vb = self.views[pa], self.views[pb]
        kxx, kyy, kxy = (float(t[0]) for t in kid_terms(s_aa, s_bb, s_ab, va, vb, np.ones((1, len(pa))),
                                                          np.ones((1, len(pb)))))
        value = kxx + kyy - 2 * kxy
        se = lo = hi = float("nan")
        if bootstrap > 1:
            rng = np.random.default_rng(seed)
            w_a = rng.multinomial(len(pa), np.full(len(pa), 1 / len(pa)), size=bootstrap).astype(float)
            w_b = rng.multinomial(len(pb), np.full(len(pb), 1 / len(pb)), size=bootstrap).astype(float)
            bxx, byy, bxy = kid_terms(s_aa, s_bb, s_ab, va, vb, w_a, w_b)
            reps = bxx + byy - 2 * bxy
            reps = reps[np.isfinite(reps)]  # a replicate that drew a single object has no pairs: dropped
            se, lo, hi = float(np.std(reps, ddof=1)), *(float(q) for q in np.percentile(reps, [2.5, 97.5]))
        return KIDEstimate(value, se, lo, hi, kxx, kyy, kxy, len(pa), int(va.sum()),
                           len(pb), int(vb.sum()), bootstrap, seed)


def cap_objects(objects: Sequence, max_objects: int, seed: int = DEFAULTS.kid_seed) -> list:
    """The distinct labels of ``objects``, reduced to a random ``max_objects`` of them (sorted) when more."""
    distinct = sorted(dict.fromkeys(objects))
    if len(distinct) <= max_objects:
        return distinct
    keep = np.random.default_rng(seed).choice(len(distinct), max_objects, replace=False)
    return [distinct[i] for i in sorted(keep)]


def kid_by_object(a: np.ndarray, b: np.ndarray, objects_a: Sequence | np.ndarray, objects_b: Sequence | np.ndarray,
                  bootstrap: int = DEFAULTS.kid_bootstrap, max_objects: int = DEFAULTS.kid_max_objects,
                  degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                  seed: int = DEFAULTS.kid_seed) -> KIDEstimate:
    """Object-aware KID of feature sets ``a`` and ``b`` whose rows show the objects ``objects_a``/``objects_b``:
    same-object view pairs left out, bootstrap over objects (see the module docstring). A set with more than
    ``max_objects`` objects is reduced to a random subset of them (by object)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check(a, b, 2)
    la, lb = np.asarray(objects_a), np.asarray(objects_b)
    if la.shape != (len(a),) or lb.shape != (len(b),):
        raise ValueError(f"need one object label per feature row: {len(a)} rows, {la.shape} labels; "
                         f"{len(b)} rows, {lb.shape} labels")
    keep_a, keep_b = cap_objects(la.tolist(), max_objects, seed), cap_objects(lb.tolist(), max_objects, seed)
    rows_a, rows_b = np.isin(la, keep_a), np.isin(lb, keep_b)
    pool = np.concatenate([a[rows_a], b[rows_b]])
    labels = [("a", o) for o in la[rows_a].tolist()] + [("b", o) for o in lb[rows_b].tolist()]
    codes = {k: i for i, k in enumerate(dict.fromkeys(labels))}
    kernel = ObjectKernel(pool, np.array([codes[k] for k in labels]), degree, gamma, coef0)
    return kernel.kid([codes[("a", o)] for o in keep_a], [codes[("b", o)] for o in keep_b], bootstrap, seed)


def kid_from_features(a: np.ndarray, b: np.ndarray, subsets: int = DEFAULTS.kid_pooled_subsets,
                      subset_size: int | None = None, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0, seed: int = DEFAULTS.kid_seed) -> tuple[float, float]:
    """Pooled (paper-style) KID: (mean, std over subsets) of the unbiased MMD^2 with every view an independent
    sample, ``subsets`` random subsets of ``subset_size`` views (default :func:`default_subset_size`), through
    torch-fidelity. Biased upwards for multi-view sets; see the module docstring. Rank with :func:`kid_by_object`."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    subset_size = subset_size or default_subset_size(len(a), len(b))
    _check(a, b, max(2, subset_size))
    out = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                 kid_subset_size=subset_size, kid_kernel="poly", kid_kernel_poly_degree=degree,
                                 kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0, rng_seed=seed,
                                 verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


@dataclass(frozen=True)
class GaussianFit:
    """Mean, covariance trace and a factor M with M^T M = (N - 1) * covariance, of one feature set."""

    mean: np.ndarray
    trace: float
    factor: np.ndarray
    n: int

    @classmethod
    def of(cls, x: np.ndarray) -> GaussianFit:
        """Fit ``x`` (float32 or float64 rows; computed in float64). With more rows than dimensions the factor is
        the R of a QR decomposition of the centred rows, accumulated over blocks of rows (R of [R_prev; block]),
        so no float64 copy of the whole set is made; R^T R is the same Gram matrix."""
        x = np.asarray(x)
        n, d = x.shape
        mean = x.mean(axis=0, dtype=np.float64)
        if n <= d:
            centred = np.asarray(x, np.float64) - mean
            return cls(mean, float((centred**2).sum() / (n - 1)), centred, n)
        factor, total = np.zeros((0, d)), 0.0
        for start in range(0, n, _FIT_ROWS):
            block = np.asarray(x[start:start + _FIT_ROWS], np.float64) - mean
            total += float((block**2).sum())
            factor = np.linalg.qr(np.vstack([factor, block]), mode="r")
        return cls(mean, total / (n - 1), factor, n)


def frechet_distance(p: GaussianFit, q: GaussianFit) -> float:
    """||mu_p - mu_q||^2 + Tr S_p + Tr S_q - 2 ||M_p M_q^T||_* / sqrt((n_p - 1)(n_q - 1))."""
    cross = np.linalg.svd(p.factor @ q.factor.T, compute_uv=False).sum() / np.sqrt((p.n - 1) * (q.n - 1))
    return float(((p.mean - q.mean) ** 2).sum() + p.trace + q.trace - 2 * cross)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to all rows of the two sets (see the module docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check(a, b, 2)
    return frechet_distance(GaussianFit.of(a), GaussianFit.of(b))


@dataclass(frozen=True)
class FIDEstimate:
    """The FID of :func:`fid_by_object`: at a fixed number of generated objects, and on all views."""

    value: float  # mean over draws of the FID of n_objects generated objects against all reference views
    std_over_draws: float  # spread over draws (not an interval)
    n_objects: int  # generated objects per draw (fewer than asked when the set is smaller)
    draws: int
    value_all_views: float  # every generated view against every reference view (depends on the counts)
    objects_a: int
    views_a: int
    objects_b: int
    views_b: int
    seed: int


def fid_by_object(a: np.ndarray, b: np.ndarray, objects_a: Sequence | np.ndarray, objects_b: Sequence | np.ndarray,
                  n_objects: int = DEFAULTS.fid_objects, draws: int = DEFAULTS.fid_draws,
                  seed: int = DEFAULTS.kid_seed) -> FIDEstimate:
    """FID of ``a`` (generated) against ``b`` (reference) at ``n_objects`` generated objects (module docstring)."""
    xa, xb = ObjectSet.of(a, objects_a), ObjectSet.of(b, objects_b)
    _check(xa.features, xb.features, 2)
    ref, fit_all = GaussianFit.of(xb.features), GaussianFit.of(xa.features)
    k = min(n_objects, xa.n_objects)
    rng = np.random.default_rng(seed)
    picks = [np.arange(k)] if k == xa.n_objects else [rng.choice(xa.n_objects, k, replace=False) for _ in range(draws)]
    vals = []
    for pick in picks:
        sub = xa.subset(pick)
        if len(sub.features) < 2:
            raise ValueError(f"need at least 2 generated views per draw, got {len(sub.features)}")
        vals.append(frechet_distance(GaussianFit.of(sub.features), ref))
    return FIDEstimate(float(np.mean(vals)), float(np.std(vals)), k, len(picks), frechet_distance(fit_all, ref),
                       xa.n_objects, len(xa.features), xb.n_objects, len(xb.features), seed)
