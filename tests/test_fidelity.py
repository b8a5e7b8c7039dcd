import numpy as np
import pytest
import scipy.linalg
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
    ref = torch_fidelity.calculate_metrics(
        input1=str(flat["A"]), input2=str(flat["B"]), kid=True, fid=True, cuda=False, cache=False, verbose=False,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
        kid_subset_size=12, kid_subsets=50)
    # torch-fidelity computes KID on float32 features in float32 arithmetic: agreement to ~1e-6 relative, not better
    assert kid_ab == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-5, abs=1e-9)
    assert fid_from_features(fa, fb) == pytest.approx(ref["frechet_inception_distance"], rel=1e-5)
