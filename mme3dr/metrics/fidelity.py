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
MMD^2 averaged over ``subsets`` random subsets of ``subset_size`` views of each set, the subsets torch-fidelity's
``kid_features_to_metric`` draws (seed 2020), so the value is torch-fidelity's (tested against it). It returns the
mean and the standard deviation *over subsets*, a spread, not an interval. Kept for comparison with published
tables (the evident reading of how the paper computed KD); do not rank multi-view generators with it.

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

**Where it runs.** Every function takes ``device`` (a torch device or its name; None: the CPU): the features are
sent there in their own float type and all heavy arithmetic runs there in torch float64 (kernel tiles and their
object sums, the bootstrap weight products, the pooled-KID subset kernels, QR and SVD). The random draws (object
caps, bootstrap weights, KID subsets, FID draws) are numpy's, made on the host with the same seeds and calls on
every device, so a value differs between devices by floating-point rounding only. Memory on the device: the
features as given (float32 or float64) and a float64 copy of the rows in use (the KID pool, a FID block of
``_FIT_ROWS`` rows, a KID subset), one kernel tile (``_TILE_ROWS`` views a side) and the O(objects^2) object-pair
sums; never a views x views matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mme3dr.defaults import DEFAULTS

#: Views per side of one kernel tile of the object-pair sums (a tile: 1024 x 1024 float64, 8 MB).
_TILE_ROWS = 1024
#: Float64 elements of one batch of pooled-KID subsets (rows x max(rows, width) per subset; 32 MB).
_SUBSET_ELEMENTS = 1 << 22
#: Rows of a feature set converted to float64 at once while fitting a Gaussian (memory stays flat in the views).
_FIT_ROWS = 8192

Device = str | torch.device | None
#: Feature rows: a numpy array, or a torch tensor (already on the device, where scoring keeps them).
Features = np.ndarray | torch.Tensor


def _device(device: Device) -> torch.device:
    """``device`` as a torch device; None is the CPU."""
    return torch.device("cpu" if device is None else device)


def _rows(x: Features, device: Device) -> torch.Tensor:
    """Feature rows on ``device`` in their own float type (float32 stays float32: half the bytes to move and hold;
    other types become float64). The arithmetic converts blocks of them to float64 where it uses them."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float64)
    return t.to(_device(device))


def _as_rows(x: Features) -> Features:
    """A tensor as it is, anything else as a numpy array."""
    return x if isinstance(x, torch.Tensor) else np.asarray(x)


def default_subset_size(n_a: int, n_b: int) -> int:
    """Views per subset of the pooled KID: ``min(1000, floor(min(n_a, n_b) / 2))`` (at least 2)."""
    return max(2, min(DEFAULTS.kid_pooled_max_subset, min(n_a, n_b) // 2))


def _check(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, need: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < need:
        raise ValueError(f"need at least {need} samples in each set, got {len(a)} and {len(b)}")


def poly_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float, coef0: float, degree: int) -> torch.Tensor:
    """k[..., i, j] = (gamma x_i.y_j + coef0)^degree for every pair of rows of x (..., n, d) and y (..., m, d) (a
    batch of matrices when 3-D), in float64."""
    return (x.to(torch.float64) @ y.to(torch.float64).mT).mul_(gamma).add_(coef0).pow_(degree)


@dataclass(frozen=True)
class ObjectSet:
    """A feature set on a torch device, with rows sorted so that each object's views are contiguous."""

    features: torch.Tensor  # (N, d) float32 or float64 as given, on the device (converted to float64 where used)
    views: np.ndarray  # (O,) views per object, in row order
    ids: np.ndarray  # (O,) object labels, in row order

    @classmethod
    def of(cls, features: Features, objects: Sequence | np.ndarray, device: Device = None) -> ObjectSet:
        """The rows of ``features`` (an array, or a tensor on any device) grouped by object, on ``device``."""
        x = _rows(features, device)
        labels = np.asarray(objects)
        if x.ndim != 2 or labels.shape != (len(x),):
            raise ValueError(f"need one object label per feature row: features {tuple(x.shape)}, labels "
                             f"{labels.shape}")
        ids, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        return cls(x[torch.from_numpy(order).to(x.device)], np.bincount(inverse, minlength=len(ids)), ids)

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
        rows_t = torch.from_numpy(rows).to(self.features.device)
        return ObjectSet(self.features[rows_t], self.views[objects], self.ids[objects])

    def blocks(self, rows: int) -> list[tuple[int, int]]:
        """Runs of consecutive objects ``[o0, o1)`` with at most ``rows`` views each (one object when it has more)."""
        ends, out, o = np.cumsum(self.views), [], 0
        while o < self.n_objects:
            stop = max(o + 1, int(np.searchsorted(ends, ends[o] - self.views[o] + rows, side="right")))
            out.append((o, stop))
            o = stop
        return out

    def membership(self, o0: int, o1: int) -> torch.Tensor:
        """E (views of objects o0..o1-1, o1 - o0) float64 with E[i, o] = 1 when view i shows object o0 + o."""
        label = torch.from_numpy(np.repeat(np.arange(o1 - o0), self.views[o0:o1])).to(self.features.device)
        return (label[:, None] == torch.arange(o1 - o0, device=label.device)).to(torch.float64)


def object_kernel_sums(x: ObjectSet, gamma: float, coef0: float, degree: int) -> torch.Tensor:
    """S[o, p] = sum over views i of object o and j of object p of (gamma x_i.x_j + coef0)^degree, for every pair
    of objects of ``x`` (float64, on the features' device). S is symmetric, so only the tiles on and above the
    diagonal are computed: tiles of whole objects, at most ``_TILE_ROWS`` views a side, each reduced to its object
    sums as E_o^T K E_p with the membership matrices E (a sum per object pair, in a fixed order)."""
    out = torch.empty((x.n_objects, x.n_objects), dtype=torch.float64, device=x.features.device)
    starts, blocks = x.starts, x.blocks(_TILE_ROWS)
    rows = [x.features[starts[o0]:starts[o0] + x.views[o0:o1].sum()].to(torch.float64) for o0, o1 in blocks]
    member = [x.membership(o0, o1) for o0, o1 in blocks]
    for i, (o0, o1) in enumerate(blocks):
        for j in range(i, len(blocks)):
            p0, p1 = blocks[j]
            s = member[i].T @ poly_kernel(rows[i], rows[j], gamma, coef0, degree) @ member[j]
            out[p0:p1, o0:o1] = s.T
            out[o0:o1, p0:p1] = s
    return out


def _within(s: torch.Tensor, views: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean kernel over pairs of views of different objects, for weight rows ``w`` (B, O) of object multiplicities."""
    num = ((w @ s) * w).sum(dim=1) - (w * w) @ s.diagonal()
    den = (w @ views) ** 2 - (w * w) @ views**2
    return num / den  # 0/0 (a row that kept one object: no pairs) is nan


def kid_terms(s_aa: torch.Tensor, s_bb: torch.Tensor, s_ab: torch.Tensor, views_a: torch.Tensor,
              views_b: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K_XX, K_YY, K_XY) for each row of object weights ``w_a`` (B, O_a) and ``w_b`` (B, O_b): the statistic of
    the sets in which object o appears w[o] times, pairs of views of one original object left out (weights of 1:
    the sets themselves; multinomial weights: a bootstrap replicate). Float64 tensors on one device."""
    kxy = ((w_a @ s_ab) * w_b).sum(dim=1) / ((w_a @ views_a) * (w_b @ views_b))
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
    """Object-pair kernel sums of a pool of objects, computed once on ``device``; the KID of any two disjoint groups
    of them.

    Scoring compares the generated set and several reference subsets overall and per category: every one of
    those KIDs is a sub-block of the pool's sums, so the O(views^2) kernel work is done once.
    """

    def __init__(self, features: Features, objects: Sequence | np.ndarray, degree: int = 3,
                 gamma: float | None = None, coef0: float = 1.0, device: Device = None) -> None:
        pool = ObjectSet.of(features, objects, device)
        gamma = 1.0 / pool.features.shape[1] if gamma is None else gamma
        self.ids, self.views = pool.ids, pool.views
        self.index = {k: i for i, k in enumerate(pool.ids.tolist())}
        self.sums = object_kernel_sums(pool, gamma, coef0, degree)  # (O, O) float64 on the device

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
        dev = self.sums.device
        ta, tb = torch.from_numpy(pa).to(dev), torch.from_numpy(pb).to(dev)
        s_aa, s_bb, s_ab = self.sums[ta][:, ta], self.sums[tb][:, tb], self.sums[ta][:, tb]
        va, vb = (torch.from_numpy(self.views[p].astype(np.float64)).to(dev) for p in (pa, pb))

        def terms(w_a: np.ndarray, w_b: np.ndarray) -> tuple[torch.Tensor, ...]:
            return kid_terms(s_aa, s_bb, s_ab, va, vb, torch.from_numpy(w_a).to(dev), torch.from_numpy(w_b).to(dev))

        kxx, kyy, kxy = (float(t[0]) for t in terms(np.ones((1, len(pa))), np.ones((1, len(pb)))))
        value = kxx + kyy - 2 * kxy
        se = lo = hi = float("nan")
        if bootstrap > 1:
            rng = np.random.default_rng(seed)
            w_a = rng.multinomial(len(pa), np.full(len(pa), 1 / len(pa)), size=bootstrap).astype(float)
            w_b = rng.multinomial(len(pb), np.full(len(pb), 1 / len(pb)), size=bootstrap).astype(float)
            bxx, byy, bxy = terms(w_a, w_b)
            reps = (bxx + byy - 2 * bxy).cpu().numpy()
            reps = reps[np.isfinite(reps)]  # a replicate that drew a single object has no pairs: dropped
            se, lo, hi = float(np.std(reps, ddof=1)), *(float(q) for q in np.percentile(reps, [2.5, 97.5]))
        return KIDEstimate(value, se, lo, hi, kxx, kyy, kxy, len(pa), int(self.views[pa].sum()),
                           len(pb), int(self.views[pb].sum()), bootstrap, seed)


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
                  seed: int = DEFAULTS.kid_seed, device: Device = None) -> KIDEstimate:
    """Object-aware KID of feature sets ``a`` and ``b`` whose rows show the objects ``objects_a``/``objects_b``:
    same-object view pairs left out, bootstrap over objects (see the module docstring). A set with more than
    ``max_objects`` objects is reduced to a random subset of them (by object). Computed on ``device``."""
    a, b = np.asarray(a), np.asarray(b)
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
    kernel = ObjectKernel(pool, np.array([codes[k] for k in labels]), degree, gamma, coef0, device)
    return kernel.kid([codes[("a", o)] for o in keep_a], [codes[("b", o)] for o in keep_b], bootstrap, seed)


def pooled_subsets(n_a: int, n_b: int, subsets: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (subsets, size) of the pooled KID's subsets of ``a`` and of ``b``, the draws torch-fidelity
    makes: ``numpy.random.RandomState(seed)``; for each subset in turn ``size`` rows of ``a`` without
    replacement, then ``size`` rows of ``b``, each with ``rng.choice(n, size, replace=False)``."""
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n_a, size, replace=False), rng.choice(n_b, size, replace=False)) for _ in range(subsets)]
    return np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor, gamma: float, coef0: float, degree: int) -> torch.Tensor:
    """(sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2 for
    x and y of m rows each, k the polynomial kernel (:func:`poly_kernel`); for each of a batch (S, m, d) of
    subsets (a 2-D x and y: one subset)."""
    m, x, y = x.shape[-2], x.to(torch.float64), y.to(torch.float64)

    def off_diagonal_sum(z: torch.Tensor) -> torch.Tensor:
        k = poly_kernel(z, z, gamma, coef0, degree)
        return k.sum(dim=(-2, -1)) - k.diagonal(dim1=-2, dim2=-1).sum(dim=-1)

    within = off_diagonal_sum(x) + off_diagonal_sum(y)
    return within / (m * (m - 1)) - 2 * poly_kernel(x, y, gamma, coef0, degree).sum(dim=(-2, -1)) / (m * m)


def kid_from_features(a: Features, b: Features, subsets: int = DEFAULTS.kid_pooled_subsets,
                      subset_size: int | None = None, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0, seed: int = DEFAULTS.kid_seed, device: Device = None) -> tuple[float, float]:
    """Pooled (paper-style) KID: (mean, std over subsets) of the unbiased MMD^2 with every view an independent
    sample, over ``subsets`` random subsets of ``subset_size`` views (default :func:`default_subset_size`):

        MMD^2_u = (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2

    for m views x of ``a`` and y of ``b`` (:func:`unbiased_mmd2`). The subsets are the ones torch-fidelity draws
    (:func:`pooled_subsets`), so this is torch-fidelity's ``kid_features_to_metric`` in float64; the std is the
    population one (ddof 0), as there. Computed on ``device``. Biased upwards for multi-view sets; see the module
    docstring. Rank with :func:`kid_by_object`."""
    a, b = _as_rows(a), _as_rows(b)
    subset_size = subset_size or default_subset_size(len(a), len(b))
    _check(a, b, max(2, subset_size))
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    xa, xb = _rows(a, device), _rows(b, device)
    rows_a, rows_b = (torch.from_numpy(r).to(xa.device) for r in pooled_subsets(len(a), len(b), subsets,
                                                                                  subset_size, seed))
    batch = max(1, _SUBSET_ELEMENTS // (subset_size * max(subset_size, a.shape[1])))  # subsets computed at once
    mmds = torch.cat([unbiased_mmd2(xa[rows_a[s:s + batch]], xb[rows_b[s:s + batch]], gamma, coef0, degree)
                      for s in range(0, subsets, batch)])
    return float(mmds.mean()), float(mmds.std(correction=0))


@dataclass(frozen=True)
class GaussianFit:
    """Mean, covariance trace and a factor M with M^T M = (N - 1) * covariance, of one feature set (float64
    tensors on the device it was fitted on)."""

    mean: torch.Tensor
    trace: float
    factor: torch.Tensor
    n: int

    @classmethod
    def of(cls, x: np.ndarray | torch.Tensor, device: Device = None) -> GaussianFit:
        """Fit ``x`` (float32 or float64 rows; computed in float64 on ``device``). With more rows than dimensions
        the factor is the R of a QR decomposition of the centred rows, accumulated over blocks of rows (R of
        [R_prev; block]), so no float64 copy of the whole set is made; R^T R is the same Gram matrix."""
        x = _rows(x, device)
        n, d = x.shape
        blocks = [x[start:start + _FIT_ROWS] for start in range(0, n, _FIT_ROWS)]
        mean = sum(block.to(torch.float64).sum(dim=0) for block in blocks) / n
        if n <= d:
            centred = x.to(torch.float64) - mean
            return cls(mean, float(centred.square().sum()) / (n - 1), centred, n)
        factor, total = x.new_zeros((0, d), dtype=torch.float64), 0.0
        for block in blocks:
            centred = block.to(torch.float64) - mean
            total += float(centred.square().sum())
            factor = torch.linalg.qr(torch.cat([factor, centred]), mode="r").R
        return cls(mean, total / (n - 1), factor, n)


def frechet_distance(p: GaussianFit, q: GaussianFit) -> float:
    """||mu_p - mu_q||^2 + Tr S_p + Tr S_q - 2 ||M_p M_q^T||_* / sqrt((n_p - 1)(n_q - 1))."""
    cross = torch.linalg.svdvals(p.factor @ q.factor.T).sum() / math.sqrt((p.n - 1) * (q.n - 1))
    return float((p.mean - q.mean).square().sum() + p.trace + q.trace - 2 * cross)


def fid_from_features(a: Features, b: Features, device: Device = None) -> float:
    """Frechet distance between Gaussians fitted to all rows of the two sets, on ``device`` (module docstring)."""
    a, b = _as_rows(a), _as_rows(b)
    _check(a, b, 2)
    return frechet_distance(GaussianFit.of(a, device), GaussianFit.of(b, device))


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


def fid_by_object(a: Features, b: Features, objects_a: Sequence | np.ndarray, objects_b: Sequence | np.ndarray,
                  n_objects: int = DEFAULTS.fid_objects, draws: int = DEFAULTS.fid_draws,
                  seed: int = DEFAULTS.kid_seed, device: Device = None) -> FIDEstimate:
    """FID of ``a`` (generated) against ``b`` (reference) at ``n_objects`` generated objects, on ``device`` (module
    docstring)."""
    xa, xb = ObjectSet.of(a, objects_a, device), ObjectSet.of(b, objects_b, device)
    _check(xa.features, xb.features, 2)
    ref, fit_all = GaussianFit.of(xb.features, device), GaussianFit.of(xa.features, device)
    k = min(n_objects, xa.n_objects)
    rng = np.random.default_rng(seed)
    picks = [np.arange(k)] if k == xa.n_objects else [rng.choice(xa.n_objects, k, replace=False) for _ in range(draws)]
    vals = []
    for pick in picks:
        sub = xa.subset(pick)
        if len(sub.features) < 2:
            raise ValueError(f"need at least 2 generated views per draw, got {len(sub.features)}")
        vals.append(frechet_distance(GaussianFit.of(sub.features, device), ref))
    return FIDEstimate(float(np.mean(vals)), float(np.std(vals)), k, len(picks), frechet_distance(fit_all, ref),
                       xa.n_objects, len(xa.features), xb.n_objects, len(xb.features), seed)
