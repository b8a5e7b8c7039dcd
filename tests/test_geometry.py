"""GeometryMetric on meshes whose answers are known by construction (boxes, cones, prisms placed by hand).

Every builder keeps the largest extent at exactly 1, so the canonical frame only translates the mesh and
lengths below (gaps, margins) are already in normalised units.
"""

import numpy as np
import pytest
import trimesh

import make_assets as M
from mme3dr.assets import AssetError
from mme3dr.metrics.base import HIGHER, LOWER, ScoreItem
from mme3dr.metrics.geometry import GeometryMetric

TOL = GeometryMetric().contact_tol
F32 = 1e-6  # GLB, PLY and STL files store float32 coordinates


def score(path, up_axis="+z", **kwargs):
    return GeometryMetric(**kwargs).score(ScoreItem("p1", "cat", "a thing", asset_path=path, up_axis=up_axis))


def boxes(*specs):
    """Concatenated boxes, each given as (extents, centre)."""
    parts = [trimesh.creation.box(extents=e, transform=trimesh.transformations.translation_matrix(c))
             for e, c in specs]
    return trimesh.util.concatenate(parts)


def table():
    """Top slab 1 x 0.6 x 0.1 at z in [0.7, 0.8]; four 0.1 x 0.1 x 0.7 legs from z = 0 up to the slab."""
    legs = [((0.1, 0.1, 0.7), (x, y, 0.35)) for x in (-0.4, 0.4) for y in (-0.2, 0.2)]
    return boxes(((1.0, 0.6, 0.1), (0.0, 0.0, 0.75)), *legs)


def overhang(foot_x=0.02):
    """A 0.1 cube foot (x in [foot_x, foot_x + 0.1]) under a 1 x 0.1 x 0.1 arm (x in [0, 1]) resting on it."""
    return boxes(((0.1, 0.1, 0.1), (foot_x + 0.05, 0.0, 0.05)), ((1.0, 0.1, 0.1), (0.5, 0.0, 0.15)))


# the overhang's centre of mass: volumes 0.001 at x = 0.07 and 0.01 at x = 0.5; the foot ends at x = 0.12
OVERHANG_COM_X = (0.001 * 0.07 + 0.01 * 0.5) / 0.011
OVERHANG_MARGIN = -(OVERHANG_COM_X - 0.12)


def z_to_y_up(mesh):
    """The same object stored y-up: (x, y, z) -> (x, z, -y), so its up (+z) becomes +y."""
    return mesh.copy().apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))


def test_table_stands(tmp_path):
    path = tmp_path / "table.glb"
    table().export(path)
    r = score(path)
    assert r.values["stable"] == 1.0 and r.values["floating_area"] == 0.0  # the top touches the legs only
    assert r.values["components"] == 5.0 and r.values["watertight"] == 1.0
    # support: leg feet span x in [-0.45, 0.45], y in [-0.25, 0.25]; the COM is above the centre
    assert r.values["stability_margin"] == pytest.approx(0.25, abs=F32)
    assert r.details["com_kind"] == "volume" and r.details["support"] == "polygon"
    assert r.details["support_area"] == pytest.approx(0.9 * 0.5, abs=F32) and r.details["tilt_deg"] == 0.0
    np.testing.assert_allclose(r.details["com"][:2], [0.0, 0.0], atol=F32)
    np.testing.assert_allclose(r.details["extents"], [1.0, 0.6, 0.8], atol=F32)
    assert r.details["n_faces"] == 5 * 12
    assert r.values["aspect_ratio"] == pytest.approx(1.0 / 0.6)
    assert r.values["degenerate_faces"] == 0.0


def test_overhang_topples(tmp_path):
    path = tmp_path / "overhang.glb"
    overhang().export(path)
    r = score(path)
    assert r.values["stable"] == 0.0
    assert r.values["stability_margin"] == pytest.approx(OVERHANG_MARGIN, abs=F32)
    assert r.values["stability_margin"] < -TOL
    assert r.values["components"] == 2.0 and r.values["floating_area"] == 0.0
    assert r.details["com_kind"] == "volume" and r.values["watertight"] == 1.0


def test_boxes_sharing_an_edge_are_one_non_watertight_component(tmp_path):
    """With the foot at x = 0 the two boxes share the vertices (0, +-0.05, 0.1), hence an edge of four faces."""
    path = tmp_path / "shared.glb"
    overhang(foot_x=0.0).export(path)
    r = score(path)
    assert r.values["components"] == 1.0 and r.values["watertight"] == 0.0
    assert r.details["com_kind"] == "surface"


def box_area(*extents):
    """Surface area of each box, 2 (ab + bc + ca), computed from its extents."""
    return [2 * (a * b + b * c + c * a) for a, b, c in extents]


@pytest.mark.parametrize("gap, floats", [(0.0, False), (TOL / 2, False), (2 * TOL, True), (0.2, True)])
def test_floating_part(tmp_path, gap, floats):
    """A 0.3 cube above a 1 x 1 x 0.4 base, ``gap`` apart: it floats only when the gap exceeds the tolerance,
    and then its share of the surface area is floating."""
    mesh = boxes(((1.0, 1.0, 0.4), (0.0, 0.0, 0.2)), ((0.3, 0.3, 0.3), (0.0, 0.0, 0.4 + gap + 0.15)))
    path = tmp_path / "floating.glb"
    mesh.export(path)
    r = score(path)
    base, cube = box_area((1.0, 1.0, 0.4), (0.3, 0.3, 0.3))
    assert r.values["components"] == 2.0 and r.details["floating_parts"] == int(floats)
    assert r.values["floating_area"] == pytest.approx(cube / (base + cube) if floats else 0.0, abs=F32)


def test_two_hovering_parts_on_a_stand(tmp_path):
    """Three separate boxes: a grounded base, and two hovering boxes far from it and from each other."""
    mesh = boxes(((1.0, 1.0, 0.1), (0.0, 0.0, 0.05)), ((0.1, 0.1, 0.1), (-0.3, 0.0, 0.6)),
                 ((0.1, 0.1, 0.1), (0.3, 0.0, 0.6)))
    path = tmp_path / "two.glb"
    mesh.export(path)
    r = score(path)
    base, cube = box_area((1.0, 1.0, 0.1), (0.1, 0.1, 0.1))
    assert r.details["floating_parts"] == 2
    assert r.values["floating_area"] == pytest.approx(2 * cube / (base + 2 * cube), abs=F32)


def test_dust_specks_cannot_dominate_floating(tmp_path):
    """200 specks (cubes of side 0.002) hovering over a 1 x 1 x 0.5 box: 200 floating components, but they hold
    only their share of the area (about 0.1%), so they cannot outweigh other prompts in a mean."""
    side = 0.002
    grid = [(x, y) for x in np.linspace(-0.45, 0.45, 20) for y in np.linspace(-0.45, 0.45, 10)]
    specks = [((side, side, side), (x, y, 0.7)) for x, y in grid]
    path = tmp_path / "dusty.glb"
    boxes(((1.0, 1.0, 0.5), (0.0, 0.0, 0.25)), *specks).export(path)
    r = score(path)
    base, speck = box_area((1.0, 1.0, 0.5), (side, side, side))
    assert r.values["components"] == 201.0 and r.details["floating_parts"] == 200
    assert r.values["floating_area"] == pytest.approx(200 * speck / (base + 200 * speck), rel=1e-3)
    assert r.values["floating_area"] < 0.002
    assert r.values["stable"] == 1.0  # specks never count as support


def test_support_is_transitive(tmp_path):
    """A cube on a cube on the base is supported; two touching cubes hovering together both float."""
    stacked = boxes(((1.0, 1.0, 0.2), (0.0, 0.0, 0.1)), ((0.3, 0.3, 0.3), (0.0, 0.0, 0.35)),
                    ((0.2, 0.2, 0.2), (0.0, 0.0, 0.6)))
    stacked.export(tmp_path / "stack.glb")
    r = score(tmp_path / "stack.glb")
    assert r.values["components"] == 3.0 and r.values["floating_area"] == 0.0
    pair = boxes(((1.0, 1.0, 0.2), (0.0, 0.0, 0.1)), ((0.2, 0.2, 0.2), (-0.1, 0.0, 0.7)),
                 ((0.2, 0.2, 0.2), (0.1, 0.05, 0.7)))  # faces touch at x = 0 (no shared vertex), 0.4 above the base
    pair.export(tmp_path / "pair.glb")
    r = score(tmp_path / "pair.glb")
    base, cube = box_area((1.0, 1.0, 0.2), (0.2, 0.2, 0.2))
    assert r.values["components"] == 3.0 and r.details["floating_parts"] == 2
    assert r.values["floating_area"] == pytest.approx(2 * cube / (base + 2 * cube), abs=F32)


def test_closed_box_is_watertight_even_with_split_vertices(tmp_path):
    assert score(M.ascii_ply(tmp_path / "box.ply", M.box().vertices, M.box().faces)).values["watertight"] == 1.0
    split = M.box()
    split.unmerge_vertices()  # every face gets its own 3 vertices: only merging closes it again
    assert len(split.vertices) == 36
    r = score(M.ascii_ply(tmp_path / "split.ply", split.vertices, split.faces))
    assert r.values["watertight"] == 1.0 and r.values["components"] == 1.0
    assert r.details["com_kind"] == "volume"


def test_open_box_and_sheet_are_not_watertight(tmp_path):
    box = M.box((1.0, 1.0, 1.0))
    keep = box.face_normals[:, 2] < 0.5  # drop the two triangles of the top side
    assert keep.sum() == 10
    r = score(M.ascii_ply(tmp_path / "open.ply", box.vertices, box.faces[keep]))
    assert r.values["watertight"] == 0.0 and r.details["com_kind"] == "surface"
    quad = M.ascii_ply(tmp_path / "quad.ply", [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], [(0, 1, 2), (0, 2, 3)])
    r = score(quad)
    assert r.values["watertight"] == 0.0
    # a flat sheet: smallest extent 0 is clamped to min_extent
    assert r.values["aspect_ratio"] == pytest.approx(1.0 / GeometryMetric().min_extent)
    assert r.values["stable"] == 1.0 and r.values["stability_margin"] == pytest.approx(0.5)


def test_degenerate_faces(tmp_path):
    box = M.box((1.0, 1.0, 1.0))
    extra = [(0.0, 0.0, 0.0), (0.1, 0.0, 0.0), (0.2, 0.0, 0.0), (0.1, 0.1, 0.1), (0.1, 0.1, 0.1), (0.1, 0.1, 0.1)]
    vertices = np.vstack([box.vertices, extra])
    zero_area = [(0, 0, 1),  # a repeated vertex
                 (8, 9, 10),  # three collinear vertices
                 (11, 12, 13)]  # three distinct vertices at one point
    faces = np.vstack([box.faces, zero_area])
    r = score(M.ascii_ply(tmp_path / "degenerate.ply", vertices, faces))
    assert r.details["n_faces"] == 15
    assert r.values["degenerate_faces"] == pytest.approx(3 / 15)


def test_aspect_ratio(tmp_path):
    path = tmp_path / "brick.stl"
    M.box((1.0, 2.0, 4.0)).export(path)
    r = score(path)
    assert r.values["aspect_ratio"] == pytest.approx(4.0)
    np.testing.assert_allclose(r.details["extents"], [0.25, 0.5, 1.0], atol=F32)


def apex_down_cone(radius, tilt_deg=0.0):
    """A cone of height 1 standing on its apex, then turned by ``tilt_deg`` about x."""
    cone = trimesh.creation.cone(radius=radius, height=1.0)  # apex at z = 1, base at z = 0
    cone.apply_transform(trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]))  # apex down
    cone.apply_transform(trimesh.transformations.rotation_matrix(np.radians(tilt_deg), [1, 0, 0]))
    return cone


@pytest.mark.parametrize("tilt_deg", [0.0, 10.0])
def test_cone_on_its_tip_is_unstable(tmp_path, tilt_deg):
    """A cone on its apex (a point support, no area) is unstable even when its centre of mass is exactly above.

    The centre of mass of a cone lies on its axis 3/4 of the height from the apex; tilted by t, it projects
    0.75 * sin(t) from the apex (then scaled by 1 / largest extent). Its side faces are 76 deg from the ground,
    far beyond the 10 deg a resting pose may correct."""
    cone = apex_down_cone(0.25, tilt_deg)
    path = tmp_path / "cone.ply"
    cone.export(path)
    r = score(path)
    assert r.values["stable"] == 0.0
    expected = -0.75 * np.sin(np.radians(tilt_deg)) / np.max(cone.extents)
    assert r.values["stability_margin"] == pytest.approx(expected, abs=F32)
    assert r.details["support"] == "point" and r.details["com_kind"] == "volume" and not r.details["settled"]
    assert r.details["support_area"] == 0.0


def test_needle_on_its_tip_and_thin_rod_on_its_end_are_unstable(tmp_path):
    """A needle (a cone of radius 0.005) on its tip has a point support; a rod of radius 0.004 standing on its
    flat end has a polygon, but its margin (the apothem r cos(pi / 16) of the 16-gon) is below ``min_margin``."""
    apex_down_cone(0.005).export(tmp_path / "needle.ply")
    r = score(tmp_path / "needle.ply")
    assert r.values["stable"] == 0.0 and r.details["support"] == "point"
    trimesh.creation.cylinder(radius=0.004, height=1.0, sections=16).export(tmp_path / "rod.ply")
    r = score(tmp_path / "rod.ply")
    assert r.values["stable"] == 0.0 and r.details["support"] == "polygon"
    assert r.values["stability_margin"] == pytest.approx(0.004 * np.cos(np.pi / 16), rel=1e-4)
    assert r.details["support_area"] == pytest.approx(0.5 * 16 * 0.004 ** 2 * np.sin(2 * np.pi / 16), rel=1e-4)
    assert score(tmp_path / "rod.ply", min_margin=0.003).values["stable"] == 1.0  # the threshold decides


def test_standing_sheet_is_unstable_lying_sheet_is_stable(tmp_path):
    """A zero-thickness unit square standing on its edge rests on a segment (no area): unstable, although its
    centroid is exactly above the edge. The same square lying flat, even tilted 2 deg, rests on its whole area."""
    standing = M.ascii_ply(tmp_path / "standing.ply", [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
                           [(0, 1, 2), (0, 2, 3)])
    r = score(standing)
    assert r.values["stable"] == 0.0 and r.values["stability_margin"] == pytest.approx(0.0, abs=F32)
    assert r.details["support"] == "segment" and r.details["tilt_deg"] == pytest.approx(90.0)
    t = np.radians(2.0)
    square = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]
    lying = M.ascii_ply(tmp_path / "lying.ply", [(x, y * np.cos(t), y * np.sin(t)) for x, y, _ in square],
                        [(0, 1, 2), (0, 2, 3)])
    r = score(lying)
    assert r.values["stable"] == 1.0 and r.values["stability_margin"] == pytest.approx(0.5, abs=1e-5)
    assert r.details["settled"] and r.details["tilt_deg"] == pytest.approx(2.0, abs=1e-4)
    assert r.details["support"] == "polygon" and r.details["support_area"] == pytest.approx(1.0, abs=1e-5)


def tilted_beam(tilt_deg):
    """A 1 x 0.6 x 0.6 box turned by ``tilt_deg`` about its long (x) axis."""
    beam = trimesh.creation.box(extents=(1.0, 0.6, 0.6))
    return beam.apply_transform(trimesh.transformations.rotation_matrix(np.radians(tilt_deg), [1, 0, 0]))


@pytest.mark.parametrize("tilt_deg", [2.0, 20.0, 45.0])
def test_tilted_box(tmp_path, tilt_deg):
    """Tilted 2 deg (within ``max_tilt_deg``), the beam settles on its bottom face: margin 0.3, its half-width.
    Tilted 20 or 45 deg it stands on its lowest edge (y, z) = R(t) (-0.3, -0.3), a segment with no area;
    the centre of mass sits at y = 0, so the margin is -|0.3 sin t - 0.3 cos t| (0 at 45 deg: balanced)."""
    path = tmp_path / "beam.ply"
    tilted_beam(tilt_deg).export(path)
    r = score(path)
    t = np.radians(tilt_deg)
    if tilt_deg <= GeometryMetric().max_tilt_deg:
        assert r.values["stability_margin"] == pytest.approx(0.3, abs=F32) and r.values["stable"] == 1.0
        assert r.details["settled"] and r.details["support"] == "polygon"
        assert r.details["support_area"] == pytest.approx(0.6, abs=F32)
    else:
        assert r.values["stability_margin"] == pytest.approx(-abs(0.3 * np.sin(t) - 0.3 * np.cos(t)), abs=F32)
        assert r.values["stable"] == 0.0
        assert not r.details["settled"] and r.details["support"] == "segment"
    assert r.details["tilt_deg"] == pytest.approx(tilt_deg, abs=1e-4)


def test_slightly_tilted_box_beats_box_balanced_on_an_edge(tmp_path):
    tilted_beam(2.0).export(tmp_path / "two.ply")
    tilted_beam(45.0).export(tmp_path / "fortyfive.ply")
    two, fortyfive = score(tmp_path / "two.ply"), score(tmp_path / "fortyfive.ply")
    assert two.values["stable"] > fortyfive.values["stable"]
    assert two.values["stability_margin"] > fortyfive.values["stability_margin"]


@pytest.mark.parametrize("left, right", [(-0.3, 0.3), (-0.1, 0.5)])
def test_prism_on_an_edge(tmp_path, left, right):
    """A triangular prism (along x) resting on its edge y = z = 0 (a segment support, no area): unstable, even
    when the centre of mass, at the triangle's centroid y = (0 + left + right) / 3, is exactly over the edge."""
    section = [(0.0, 0.0), (left, 0.5), (right, 0.5)]
    prism = trimesh.Trimesh([(x, y, z) for x in (0.0, 1.0) for y, z in section]).convex_hull
    path = tmp_path / "prism.ply"
    prism.export(path)
    r = score(path)
    com_y = (left + right) / 3
    assert r.details["support"] == "segment"
    assert r.values["stability_margin"] == pytest.approx(-abs(com_y), abs=F32)
    assert r.values["stable"] == 0.0


@pytest.mark.parametrize("build", [table, overhang])
def test_y_up_matches_z_up(tmp_path, build):
    z_path, y_path = tmp_path / "z.glb", tmp_path / "y.glb"
    build().export(z_path)
    z_to_y_up(build()).export(y_path)
    z, y = score(z_path), score(y_path, up_axis="+y")
    assert y.values.keys() == z.values.keys()
    for key in z.values:
        assert y.values[key] == pytest.approx(z.values[key], abs=F32), key
    np.testing.assert_allclose(y.details["extents"], z.details["extents"], atol=F32)


def test_wrong_up_axis_changes_the_answer(tmp_path):
    """The y-up overhang read as z-up lies on its side (both boxes on the ground) and no longer topples."""
    path = tmp_path / "y.glb"
    z_to_y_up(overhang()).export(path)
    assert score(path, up_axis="+y").values["stable"] == 0.0
    assert score(path, up_axis="+z").values["stable"] == 1.0


def test_missing_asset_raises_asset_error(tmp_path):
    with pytest.raises(AssetError) as info:
        score(tmp_path / "nope.glb")
    assert info.value.reason == "missing"


def test_directions_and_config():
    metric = GeometryMetric()
    assert metric.name == "geometry" and metric.needs == "asset"
    assert set(metric.directions) == {"watertight", "components", "floating_area", "stable", "stability_margin",
                                      "degenerate_faces", "aspect_ratio"}
    assert metric.directions["aspect_ratio"] == "none"
    assert metric.directions["stable"] == HIGHER and metric.directions["floating_area"] == LOWER
    assert metric.config()["contact_tol"] == TOL
    for changed in ({"contact_tol": 0.02}, {"min_margin": 0.02}, {"max_tilt_deg": 5.0}):
        assert GeometryMetric(**changed).config_hash() != metric.config_hash()
    for bad in ({"min_margin": 0.0}, {"contact_tol": -1.0}, {"max_tilt_deg": 90.0}):
        with pytest.raises(ValueError):
            GeometryMetric(**bad)


def test_values_cover_directions(tmp_path):
    path = tmp_path / "box.glb"
    M.box().export(path)
    r = score(path)
    assert set(r.values) == set(GeometryMetric.directions)
    assert all(isinstance(v, float) for v in r.values.values())
