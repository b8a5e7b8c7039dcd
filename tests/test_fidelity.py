import numpy as np
import pytest
import scipy.linalg
import torch
import trimesh

import tiny_features
from mme3dr.assets import load_asset
from mme3dr.metrics import fid_from_features, kid_from_features
from mme3dr.metrics.features import InceptionFeatures
from mme3dr.render.output import write_render
from mme3dr.render.presets import get_preset
from mme3dr.render.renderer import get_renderer


def numpy_kid(a, b, subsets, size, seed):
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, written out term by term, on torch-fidelity's subsets."""
    rng = np.random.RandomState(seed)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(size, dtype=bool)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def numpy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_kid_matches_an_independent_numpy_mmd():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(120, 24)), rng.normal(size=(90, 24)) * 1.2 + 0.3
    mean, std = kid_from_features(a, b, subsets=20, subset_size=40, seed=7)
    ref_mean, ref_std = numpy_kid(a, b, 20, 40, 7)
    assert mean == pytest.approx(ref_mean, abs=1e-6) and std == pytest.approx(ref_std, abs=1e-6)
    assert mean > 0.1
    with pytest.raises(ValueError, match="at least 500"):
        kid_from_features(a, b, subset_size=500)


def test_fid_matches_scipy_and_self_distance_is_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) + 0.5
    assert fid_from_features(a, b) == pytest.approx(numpy_fid(a, b), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    self_kid, _ = kid_from_features(a, a)  # subsets of one set overlap, so "about 0", not exactly 0
    assert abs(self_kid) < 0.05 * kid_from_features(a, b)[0]


def _render_set(folder, meshes, preset):
    r = get_renderer()
    for i, m in enumerate(meshes):
        m.export(folder / f"m{i}.ply")
        write_render(folder / f"obj{i}", r.render(load_asset(folder / f"m{i}.ply"), preset), preset, {})
    return sorted(folder.glob("obj*/[0-9][0-9][0-9].png"))


def test_kid_fid_on_real_renders_through_torch_fidelity(tmp_path):
    """Inception features of rendered PNGs, random weights loaded from a local file; checked against
    torch-fidelity's own calculate_metrics on the same image folders with the same weights."""
    import torch_fidelity
    from PIL import Image
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id

    weights = tiny_features.random_inception_weights(tmp_path / "inception.pth")
    preset = get_preset("canonical").with_overrides(resolution=64, n_views=8, background="white")
    boxes = [trimesh.creation.box(extents=(1, 0.3 + 0.2 * i, 0.5)) for i in range(3)]
    spheres = [trimesh.creation.icosphere(subdivisions=2).apply_scale((1, 1, 0.4 + 0.3 * i)) for i in range(3)]
    for s in spheres:  # a different shape and colour: a clearly different distribution
        s.visual.vertex_colors = np.tile([30, 60, 220, 255], (len(s.vertices), 1))
    for folder in ("A", "A2", "B"):
        (tmp_path / folder).mkdir()
    a = _render_set(tmp_path / "A", boxes, preset)
    a2 = _render_set(tmp_path / "A2", boxes, preset)  # the same assets rendered again
    b = _render_set(tmp_path / "B", spheres, preset)
    ext = InceptionFeatures(weights=weights, device="cpu", batch_size=8)
    fa, fa2, fb = (ext([Image.open(p).convert("RGB") for p in s]) for s in (a, a2, b))
    np.testing.assert_array_equal(fa, fa2)  # deterministic renders -> identical features
    assert np.isfinite(fa).all() and fa.std(axis=0).mean() > 1e-3  # non-degenerate weights
    kid_ab, _ = kid_from_features(fa, fb, subset_size=12, subsets=50)
    kid_aa, _ = kid_from_features(fa, fa2, subset_size=12, subsets=50)
    fid_aa, fid_ab = fid_from_features(fa, fa2), fid_from_features(fa, fb)
    assert abs(fid_aa) < 1e-4 * fid_ab  # 0 up to sqrtm round-off on a rank-deficient 2048-d covariance
    assert kid_ab > 0 and abs(kid_aa) < 0.1 * kid_ab
    flat = {}
    for name, paths in (("A", a), ("B", b)):
        flat[name] = tmp_path / f"flat{name}"
        flat[name].mkdir()
        for i, p in enumerate(paths):
            Image.open(p).convert("RGB").save(flat[name] / f"{i:03d}.png")
    kw = dict(input1=str(flat["A"]), input2=str(flat["B"]), cuda=False, cache=False, verbose=False,
              feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
              kid_subset_size=12, kid_subsets=50)
    ref = torch_fidelity.calculate_metrics(kid=True, fid=True, **kw)
    # 1. Like with like: torch-fidelity's own feature extraction of the same images gives our features exactly.
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                         feature_extractor_weights_path=str(weights))
    ta, tb = (extract_featuresdict_from_input_id(i, extractor, **kw)["2048"] for i in (1, 2))
    np.testing.assert_array_equal(fa, ta.numpy())
    np.testing.assert_array_equal(fb, tb.numpy())
    # 2. The same arithmetic: our KID (float64 kernel) is torch-fidelity's KID of those features in float64, and
    #    torch-fidelity end to end is its KID of the float32 features.
    t64 = kid_features_to_metric(ta.double(), tb.double(), kid_subsets=50, kid_subset_size=12, verbose=False)
    t32 = kid_features_to_metric(ta, tb, kid_subsets=50, kid_subset_size=12, verbose=False)
    assert kid_ab == pytest.approx(t64["kernel_inception_distance_mean"], rel=1e-12)
    assert ref["kernel_inception_distance_mean"] == t32["kernel_inception_distance_mean"]
    # 3. float64 vs float32 kernels differ by rounding only. Each kernel entry (x.y/d + 1)^3 is a length-d dot
    #    product in float32, whose rounding error grows like sqrt(d) * u * |k| (u = 2^-24, the probabilistic bound
    #    for a sum of d rounded terms); MMD^2 combines means of three kernel blocks, so the difference is at most
    #    sqrt(d) * u * (mean|Kxx| + mean|Kyy| + 2 mean|Kxy|).
    x, y, d = ta.double().numpy(), tb.double().numpy(), ta.shape[1]
    kernel_mass = sum(w * np.abs((p @ q.T / d + 1) ** 3).mean() for w, p, q in ((1, x, x), (1, y, y), (2, x, y)))
    assert abs(kid_ab - ref["kernel_inception_distance_mean"]) <= np.sqrt(d) * 2.0 ** -24 * kernel_mass
    assert fid_from_features(fa, fb) == pytest.approx(ref["frechet_inception_distance"], rel=1e-5)


# --- object-aware KID and fixed-count FID on multi-view features --------------------------------------------------
from mme3dr.metrics.fidelity import ObjectKernel, fid_by_object, kid_by_object, kid_terms  # noqa: E402


def clustered(rng, n_objects, views=24, d=256, var_object=1.0, var_view=2.0, shift=0.0):
    """Views of objects: x = c_o + e, c_o ~ N(0, var_object I) per object, e ~ N(0, var_view I) per view.
    The per-view distribution is N(shift, (var_object + var_view) I) whatever the split; a larger var_object
    share means views of one object are more alike (a more view-consistent generator)."""
    centres = rng.normal(scale=np.sqrt(var_object), size=(n_objects, 1, d))
    x = centres + rng.normal(scale=np.sqrt(var_view), size=(n_objects, views, d)) + shift
    return x.reshape(-1, d), np.repeat(np.arange(n_objects), views)


def numpy_object_kid(a, b, la, lb):
    """Object-aware MMD^2 written out: the full kernel matrices with every same-object pair masked out."""
    d = a.shape[1]
    kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    ox, oy = la[:, None] != la[None, :], lb[:, None] != lb[None, :]
    return kxx[ox].mean() + kyy[oy].mean() - 2 * kxy.mean(), kxx[ox].mean(), kyy[oy].mean(), kxy.mean()


def test_object_kid_matches_a_term_by_term_numpy_mmd():
    rng = np.random.default_rng(3)
    a, la = clustered(rng, 9, views=5, d=16)
    b, lb = clustered(rng, 7, views=4, d=16, shift=0.3)
    a, la = a[:-2], la[:-2]  # unequal numbers of views per object
    perm = rng.permutation(len(a))  # rows of one object need not be contiguous
    est = kid_by_object(a[perm], b, la[perm], lb, bootstrap=50)
    value, kxx, kyy, kxy = numpy_object_kid(a, b, la, lb)
    assert est.value == pytest.approx(value, rel=1e-10) and est.k_xx == pytest.approx(kxx, rel=1e-10)
    assert est.k_yy == pytest.approx(kyy, rel=1e-10) and est.k_xy == pytest.approx(kxy, rel=1e-10)
    assert (est.objects_a, est.views_a, est.objects_b, est.views_b) == (9, 43, 7, 28)
    assert est.value > 0.05 and est.se > 0 and est.ci_low < est.value < est.ci_high
    # the same statistic from a kernel pool of both sets, by group
    pool = ObjectKernel(np.concatenate([a, b]), np.concatenate([la, 100 + lb]))
    assert pool.kid(list(range(9)), list(range(100, 107)), bootstrap=0).value == pytest.approx(value, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2 objects"):
        kid_by_object(a[la == 0], b, la[la == 0], lb)
    with pytest.raises(ValueError, match="one object label per feature row"):
        kid_by_object(a, b, la[:-1], lb)


def test_bootstrap_replicate_equals_the_statistic_of_the_resampled_sets():
    """A replicate with multiplicities w is the object-aware KID of the sets in which object o appears w[o] times,
    every pair of views of one original object (copies included) left out."""
    rng = np.random.default_rng(4)
    a, la = clustered(rng, 6, views=3, d=8)
    b, lb = clustered(rng, 5, views=4, d=8)
    pool = ObjectKernel(np.concatenate([a, b]), np.concatenate([la, 10 + lb]))
    sa, sb = pool.sums[:6, :6], pool.sums[6:, 6:]
    wa, wb = np.array([[2.0, 0, 1, 3, 0, 0]]), np.array([[0.0, 1, 1, 2, 1]])
    va, vb, twa, twb = (torch.tensor(x, dtype=torch.float64) for x in (pool.views[:6], pool.views[6:], wa, wb))
    xx, yy, xy = (float(t[0]) for t in kid_terms(sa, sb, pool.sums[:6, 6:], va, vb, twa, twb))
    rep_a = np.concatenate([np.flatnonzero(la == o) for o in range(6) for _ in range(int(wa[0, o]))])
    rep_b = np.concatenate([np.flatnonzero(lb == o) for o in range(5) for _ in range(int(wb[0, o]))])
    value, kxx, kyy, kxy = numpy_object_kid(a[rep_a], b[rep_b], la[rep_a], lb[rep_b])
    assert (xx, yy, xy) == pytest.approx((kxx, kyy, kxy), rel=1e-10)


@pytest.mark.parametrize("n_objects, pooled_x100", [(38, 36.2), (64, 21.6), (249, 5.6)])
def test_main_kid_is_unbiased_where_the_pooled_kid_is_not(n_objects, pooled_x100):
    """Issue 12: features of 24 views per object, generated and reference sets from one distribution (true KID 0).
    The pooled estimator reproduces the reported 36.2 / 21.6 / 5.6 (x100); the object-aware KID is within 2
    standard errors of 0, and the pooled value lies many of those standard errors away."""
    rng = np.random.default_rng(n_objects)
    a, la = clustered(rng, n_objects)
    b, lb = clustered(rng, n_objects)
    est = kid_by_object(a, b, la, lb, bootstrap=300)
    assert abs(est.value) < 2 * est.se
    pooled, _ = kid_from_features(a, b, subsets=25)
    assert 100 * pooled == pytest.approx(pooled_x100, rel=0.12)
    assert pooled > 5 * est.se


def test_a_view_consistent_generator_is_never_ranked_below_a_less_consistent_one():
    """Issue 12: same per-view distribution N(0, 3 I) for the reference and both generators; the view-consistent one
    keeps 97% of the variance per object (views alike), the other 33%. The pooled KID ranks the consistent one far
    worse (about 170 vs 35 x100); the object-aware KID never ranks it worse by more than 2 standard errors of the
    difference, and when the less consistent generator is also shifted (a truly worse per-view distribution) the
    object-aware KID ranks the consistent one first every time, where the pooled KID still ranks it last."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        ref, lr = clustered(rng, 38)
        cons, lc = clustered(rng, 38, var_object=2.9, var_view=0.1)
        less, ll = clustered(rng, 38)
        shifted = less + 0.25
        kc, kl, ks = (kid_by_object(x, ref, lx, lr, bootstrap=200) for x, lx in ((cons, lc), (less, ll), (shifted, ll)))
        assert kc.value - kl.value < 2 * np.hypot(kc.se, kl.se)
        assert kc.value < ks.value
        pc, pl, ps = (kid_from_features(x, ref, subsets=10)[0] for x in (cons, less, shifted))
        assert pc - pl > 1.0 and pc > ps  # the pooled estimator inverts both rankings (x100: > 100 points)


def test_kid_caps_the_objects_per_set_by_object():
    rng = np.random.default_rng(5)
    a, la = clustered(rng, 30, views=3, d=8)
    b, lb = clustered(rng, 12, views=3, d=8)
    est = kid_by_object(a, b, la, lb, max_objects=10, bootstrap=20)
    assert (est.objects_a, est.views_a, est.objects_b, est.views_b) == (10, 30, 10, 30)
    again = kid_by_object(a, b, la, lb, max_objects=10, bootstrap=20)
    assert again == est  # the subset is seeded


def test_fid_is_exact_for_rank_deficient_covariances():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 64)), rng.normal(size=(30, 64)) * 1.1 + 0.2  # fewer rows than dimensions
    assert fid_from_features(a, b) == pytest.approx(numpy_fid(a, b), rel=1e-6)
    assert abs(fid_from_features(a, a)) < 1e-9 * fid_from_features(a, b)


def test_headline_fid_is_computed_at_a_fixed_object_count():
    """Issue 12: FID of same-distribution sets falls as objects are added (its bias depends on n); the headline
    value at a fixed number of generated objects does not."""
    rng = np.random.default_rng(7)
    ref, lr = clustered(rng, 120, views=6, d=96)
    rows = []
    for n in (20, 60, 180):
        gen, lg = clustered(rng, n, views=6, d=96)
        rows.append(fid_by_object(gen, ref, lg, lr, n_objects=20, draws=8))
    all_views = [r.value_all_views for r in rows]
    assert all_views[0] > 1.3 * all_views[1] > 1.3 * 1.2 * all_views[2]  # FID on all views depends on n
    fixed = [r.value for r in rows]
    assert max(fixed) < 1.1 * min(fixed)  # at 20 objects per draw: the same value up to draw noise
    assert [r.n_objects for r in rows] == [20, 20, 20] and rows[0].draws == 1 and rows[1].draws == 8
    assert rows[0].value == pytest.approx(rows[0].value_all_views)  # 20 objects: used whole
    assert (rows[2].objects_a, rows[2].views_a, rows[2].objects_b, rows[2].views_b) == (180, 1080, 120, 720)
    sub = fid_by_object(gen, ref, lg, lr, n_objects=500)  # more than the set has: all of it, and recorded
    assert sub.n_objects == 180 and sub.value == pytest.approx(sub.value_all_views)


# --- the arithmetic on a torch device: the same numbers as independent numpy formulas and torch-fidelity ----------
import dataclasses  # noqa: E402

from mme3dr.metrics import fidelity  # noqa: E402

#: Devices the arithmetic is checked on: None is the CPU; cuda where this machine has one.
DEVICES = [None, "cpu", torch.device("cpu"),
           pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


def uneven_objects(rng, views, d, shift=0.0):
    """Clustered views, ``views[o]`` of object o, rows shuffled (an object's views need not be contiguous)."""
    x = np.concatenate([rng.normal(size=(1, d)) + rng.normal(scale=1.5, size=(v, d)) + shift for v in views])
    labels = np.repeat(np.arange(len(views)), views)
    perm = rng.permutation(len(x))
    return x[perm], labels[perm]


def brute_object_sums(x, labels, gamma, coef0, degree):
    """S[o, p] = sum of k(x_i, x_j) over views i of object o and j of object p, one pair of views at a time."""
    ids = {o: i for i, o in enumerate(np.unique(labels))}
    s = np.zeros((len(ids), len(ids)))
    for i in range(len(x)):
        for j in range(len(x)):
            s[ids[labels[i]], ids[labels[j]]] += (gamma * float(x[i] @ x[j]) + coef0) ** degree
    return s


def numpy_object_kid_bootstrap(a, b, la, lb, bootstrap, seed, gamma, coef0, degree):
    """The object-aware KID and its bootstrap from full kernel matrices: a replicate weights row i by the
    multiplicity of its object (``numpy.random.default_rng(seed).multinomial``, one draw per set, objects in
    sorted order) and leaves out every pair of rows of one object."""
    k = lambda p, q: (gamma * (p @ q.T) + coef0) ** degree  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    ia, ib = np.unique(la, return_inverse=True)[1], np.unique(lb, return_inverse=True)[1]
    oa, ob = ia.max() + 1, ib.max() + 1

    def stat(wa, wb):
        ra, rb = wa[ia], wb[ib]
        pa, pb = np.outer(ra, ra) * (ia[:, None] != ia[None, :]), np.outer(rb, rb) * (ib[:, None] != ib[None, :])
        with np.errstate(invalid="ignore"):
            kxx, kyy = (kaa * pa).sum() / pa.sum(), (kbb * pb).sum() / pb.sum()
        return kxx, kyy, (kab * np.outer(ra, rb)).sum() / (ra.sum() * rb.sum())

    kxx, kyy, kxy = stat(np.ones(oa), np.ones(ob))
    rng = np.random.default_rng(seed)
    wa = rng.multinomial(oa, np.full(oa, 1 / oa), size=bootstrap)
    wb = rng.multinomial(ob, np.full(ob, 1 / ob), size=bootstrap)
    reps = np.array([(lambda t: t[0] + t[1] - 2 * t[2])(stat(x, y)) for x, y in zip(wa, wb)])
    reps = reps[np.isfinite(reps)]
    return (kxx + kyy - 2 * kxy, np.std(reps, ddof=1), *np.percentile(reps, [2.5, 97.5]), kxx, kyy, kxy)


def nuclear_fid(a, b):
    """FID with Tr (S_a S_b)^(1/2) as the nuclear norm of the product of the centred rows (no QR, numpy SVD)."""
    ma, mb = a - a.mean(0), b - b.mean(0)
    cross = np.linalg.svd(ma @ mb.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    tr = (ma**2).sum() / (len(a) - 1) + (mb**2).sum() / (len(b) - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + tr - 2 * cross)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tile_rows", [2, 5, 1024])
def test_object_kernel_sums_equal_a_double_loop_over_views(device, tile_rows, monkeypatch):
    """Tiles of 2 and 5 views split the pool into many tiles, with objects larger than a tile (7 views)."""
    monkeypatch.setattr(fidelity, "_TILE_ROWS", tile_rows)
    rng = np.random.default_rng(10)
    x, labels = uneven_objects(rng, [3, 7, 1, 4, 2, 5], d=6)
    for gamma, coef0, degree in ((1 / 6, 1.0, 3), (0.3, 0.5, 2)):
        pool = ObjectKernel(x.astype(np.float32), labels, degree, gamma, coef0, device=device)
        assert pool.sums.dtype == torch.float64 and pool.sums.device.type == ("cpu" if device is None else
                                                                              torch.device(device).type)
        ref = brute_object_sums(x.astype(np.float32).astype(np.float64), labels, gamma, coef0, degree)
        np.testing.assert_allclose(pool.sums.cpu().numpy(), ref, rtol=1e-12)
        np.testing.assert_array_equal(pool.views, [3, 7, 1, 4, 2, 5])


@pytest.mark.parametrize("device", DEVICES)
def test_object_kid_and_its_bootstrap_equal_full_kernel_matrices(device):
    rng = np.random.default_rng(11)
    a, la = uneven_objects(rng, [4, 2, 5, 3, 3, 1, 4], d=12)
    b, lb = uneven_objects(rng, [3, 3, 2, 4, 1], d=12, shift=0.4)
    for gamma, coef0, degree in ((None, 1.0, 3), (0.05, 2.0, 2)):
        est = kid_by_object(a, b, la, lb, bootstrap=300, degree=degree, gamma=gamma, coef0=coef0, seed=5,
                            device=device)
        ref = numpy_object_kid_bootstrap(a, b, la, lb, 300, 5, gamma or 1 / 12, coef0, degree)
        got = (est.value, est.se, est.ci_low, est.ci_high, est.k_xx, est.k_yy, est.k_xy)
        assert got == pytest.approx(ref, rel=1e-9)
        assert all(type(v) is float for v in got)  # Python floats, whatever the device
        assert (est.objects_a, est.views_a, est.objects_b, est.views_b) == (7, 22, 5, 13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_a, n_b, d, subsets, size, degree, gamma, coef0", [
    (50, 40, 16, 10, 20, 3, None, 1.0),
    (120, 90, 24, 20, 40, 2, 0.1, 0.5),
    (64, 64, 8, 5, 64, 4, None, 2.0),  # subsets of every row: only the order of the draws differs
    (30, 200, 32, 15, 2, 3, 0.02, 1.0),  # the smallest subsets
])
@pytest.mark.parametrize("batch", [1, 3, None])
def test_pooled_kid_is_torch_fidelitys(device, n_a, n_b, d, subsets, size, degree, gamma, coef0, batch, monkeypatch):
    """The same subsets and the same statistic as torch-fidelity's kid_features_to_metric (float64 features),
    whether the subsets are computed one at a time, 3 at a time (the last batch shorter) or all at once."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    if batch:
        monkeypatch.setattr(fidelity, "_SUBSET_ELEMENTS", batch * size * max(size, d))
    rng = np.random.default_rng(n_a + n_b)
    a = rng.normal(size=(n_a, d)).astype(np.float32)
    b = (rng.normal(size=(n_b, d)) * 1.1 + 0.2).astype(np.float32)
    mean, std = kid_from_features(a, b, subsets, size, degree, gamma, coef0, seed=9, device=device)
    ref = kid_features_to_metric(torch.from_numpy(a).double(), torch.from_numpy(b).double(), kid_subsets=subsets,
                                 kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=degree,
                                 kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0, rng_seed=9, verbose=False)
    assert type(mean) is float and type(std) is float
    assert mean == pytest.approx(ref[KEY_METRIC_KID_MEAN], rel=1e-9)
    assert std == pytest.approx(ref[KEY_METRIC_KID_STD], rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fit_rows", [7, 8192])
def test_fid_equals_the_nuclear_norm_of_the_centred_product(device, fit_rows, monkeypatch):
    """Fewer and more rows than dimensions; with 7 rows per block the QR factor is accumulated over many blocks."""
    monkeypatch.setattr(fidelity, "_FIT_ROWS", fit_rows)
    rng = np.random.default_rng(12)
    for n_a, n_b, d in ((90, 60, 10), (20, 15, 40), (50, 12, 30)):
        a, b = rng.normal(size=(n_a, d)), rng.normal(size=(n_b, d)) * 1.2 + 0.3
        value = fid_from_features(a.astype(np.float32), b, device=device)
        assert type(value) is float
        assert value == pytest.approx(nuclear_fid(a.astype(np.float32).astype(np.float64), b), rel=1e-9)
        if n_a > d and n_b > d:  # full-rank covariances: scipy's sqrtm is accurate too
            assert value == pytest.approx(numpy_fid(a.astype(np.float32).astype(np.float64), b), rel=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_count_fid_equals_draws_recomputed_in_numpy(device):
    rng = np.random.default_rng(13)
    gen, lg = uneven_objects(rng, [3, 4, 2, 5, 3, 3, 4, 2, 3], d=8)
    ref, lr = uneven_objects(rng, [4, 4, 3, 5, 2], d=8, shift=0.5)
    est = fid_by_object(gen, ref, lg, lr, n_objects=4, draws=6, seed=3, device=device)
    draws = np.random.default_rng(3)
    vals = [nuclear_fid(gen[np.isin(lg, draws.choice(9, 4, replace=False))], ref) for _ in range(6)]
    assert (est.value, est.std_over_draws) == pytest.approx((np.mean(vals), np.std(vals)), rel=1e-9)
    assert est.value_all_views == pytest.approx(nuclear_fid(gen, ref), rel=1e-9)
    assert dataclasses.astuple(est)[2:] == pytest.approx((4, 6, est.value_all_views, 9, 29, 5, 18, 3))
    assert all(type(v) is float for v in (est.value, est.std_over_draws, est.value_all_views))
