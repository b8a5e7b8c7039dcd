"""Loading budget and file rules: the loader process (time, memory, crashes, parent death), companion files,
declared sizes, zero-area faces, compression. The whole hostile corpus runs through the CLI in test_hostile.py."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

import hostile_corpus as H
import make_assets as M
from mme3dr.adapters.base import GenerationRequest
from mme3dr.adapters.folder import FolderGenerator
from mme3dr.asset_worker import BudgetedWorker
from mme3dr.assets import AssetError, check_asset, drop_zero_area_faces, face_areas, load_asset
from mme3dr.defaults import DEFAULTS
from mme3dr.render.output import file_sha256

ROOT = Path(__file__).resolve().parents[1]


def _reason(path, **kw) -> str | None:
    return check_asset("p", path, **kw).reason


# ----------------------------------------------------------------------------------------------- the loader process


def test_a_request_past_the_time_budget_is_killed_and_the_next_one_works():
    with BudgetedWorker(timeout_s=5) as w:
        assert w.call(operator.add, 1, 2) == 3
        first = w.pid
        with pytest.raises(AssetError) as info:
            w.call(time.sleep, 3600, label="x.obj")  # a read that never ends
        assert info.value.reason == "timeout" and "5 s" in info.value.message
        assert w.pid is None
        assert w.call(operator.add, 2, 2) == 4 and w.pid != first and w.starts == 2


def test_an_allocation_past_the_memory_budget_fails_at_once():
    with BudgetedWorker(memory_mb=256) as w:
        with pytest.raises(AssetError) as info:
            w.call(bytearray, 4 * 2**30)  # 4 GiB: refused by the address-space limit, no page touched
        assert info.value.reason == "too_large" and "256 MiB" in info.value.message
        assert len(w.call(bytearray, 64 * 2**20)) == 64 * 2**20  # a fresh worker, within budget


def test_a_crashing_loader_is_an_unreadable_asset_and_errors_come_back_typed():
    with BudgetedWorker() as w:
        with pytest.raises(AssetError) as info:
            w.call(os._exit, 3)
        assert info.value.reason == "unreadable" and "exit status 3" in info.value.message
        with pytest.raises(ZeroDivisionError):
            w.call(operator.truediv, 1, 0)  # a bug stays a bug (not an asset reason)
        err = w.call(AssetError, "degenerate", "msg", "/a/b.obj")  # AssetError pickles with its fields
        assert (err.reason, err.message, err.path) == ("degenerate", "msg", Path("/a/b.obj"))


def test_the_loader_dies_with_its_caller(tmp_path):
    """SIGKILL of the process that started a loader: the loader exits too (parent-death signal, or end of file)."""
    script = ("import operator, sys, time\nfrom mme3dr.asset_worker import BudgetedWorker\n"
              "w = BudgetedWorker(); w.call(operator.add, 1, 1); print(w.pid, flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(300):  # up to 30 s; normally immediate
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:  # reaped by init as a zombie: also gone
            if f.read().split(") ")[1].startswith("Z"):
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the loader outlived its caller")


def test_load_asset_reuses_one_loader_process(tmp_path):
    from mme3dr.asset_worker import shared_worker

    for i in range(3):
        load_asset(M.vertex_coloured_glb(tmp_path / f"{i}.glb"))
    pid = shared_worker().pid
    load_asset(tmp_path / "0.glb")
    assert shared_worker().pid == pid


# ------------------------------------------------------------------------------------------------ files and folders


def test_a_fifo_companion_does_not_hang(tmp_path):
    """The issue's case: an OBJ whose mtllib is a FIFO hung `validate`."""
    os.mkfifo(tmp_path / "m.mtl")
    (tmp_path / "a.obj").write_text(H.obj_text("m.mtl"))
    assert _reason(tmp_path / "a.obj") == "not_a_file"


def test_file_sha256_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "a.glb")
    with pytest.raises(OSError, match="not a regular file"):
        file_sha256(tmp_path / "a.glb")


@pytest.mark.parametrize("name", ["../outside/secret.mtl", "/etc/passwd", "link.mtl"])
def test_companions_outside_the_folder_are_refused(tmp_path, name):
    H.make_outside(tmp_path / "outside")
    folder = tmp_path / "asset"
    folder.mkdir()
    os.symlink(tmp_path / "outside" / "secret.mtl", folder / "link.mtl")
    (folder / "a.obj").write_text(H.obj_text(name))
    report = check_asset("p", folder / "a.obj")
    assert report.reason == "outside_folder" and "outside the asset's folder" in report.message


def test_a_companion_found_beside_the_asset_is_used(tmp_path):
    """Exporters write absolute or foreign paths; a file of that name beside the asset is what is read."""
    obj = M.obj_with_mtl(tmp_path / "o")
    obj.write_text(obj.read_text().replace("mtllib thing.mtl", "mtllib /home/someone/export/thing.mtl"))
    r = check_asset("p", obj)
    assert r.ok and r.has_texture


def test_big_files_and_texture_bombs_are_too_large(tmp_path):
    with open(tmp_path / "big.glb", "wb") as f:
        f.truncate((DEFAULTS.max_file_mb + 1) * 2**20)
    assert _reason(tmp_path / "big.glb") == "too_large"
    H.obj_with_texture(tmp_path / "t", "bomb.png")
    (tmp_path / "t" / "bomb.png").write_bytes(H.png_header(20_000, 20_000))
    report = check_asset("p", tmp_path / "t" / "model.obj")
    assert report.reason == "too_large" and "20000 x 20000" in report.message


def test_the_folder_adapter_refuses_an_asset_linked_from_outside(tmp_path):
    H.make_outside(tmp_path / "outside")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "outside" / "secret.glb", root / "p1.glb")
    req = GenerationRequest("p1", "a box", "spatial", 0, tmp_path / "out")
    with pytest.raises(ValueError, match=r"secret.glb, outside .*root \(a symbolic link out of the folder\?\)"):
        FolderGenerator(str(root)).generate_one(req)


# -------------------------------------------------------------------------------------------------- declared sizes


@pytest.mark.parametrize("case", ["glb-accessor-bomb", "glb-accessor-overrun", "glb-buffer-lie", "glb-length-lie",
                                  "gltf-data-uri-lie", "ply-binary-count-lie", "ply-face-bomb", "stl-count-lie",
                                  "off-count-lie", "glb-image-bomb"])
def test_lying_or_huge_declared_sizes_are_refused_before_parsing(tmp_path, case):
    c = next(c for c in H.CASES if c.id == case)
    H.make_outside(tmp_path / "outside")
    c.build(tmp_path, tmp_path / "outside", c.id)
    [path] = [p for p in tmp_path.rglob(f"{c.id}*") if p.is_file()] or list((tmp_path / c.id).glob("model.*"))
    assert _reason(path) == c.reason


def test_gltf_accessor_sizes_match_a_valid_file(tmp_path):
    """A valid file written by trimesh passes the declared-size checks (they are not too strict)."""
    m = trimesh.creation.icosphere(subdivisions=3)
    m.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(m.vertices), 2)),
                                             image=M.checker_image())
    for ext in ("glb", "gltf", "ply", "stl", "off", "obj"):
        m.export(tmp_path / f"s.{ext}")
        assert check_asset("p", tmp_path / f"s.{ext}").ok, ext


def test_draco_is_unsupported_compression_not_collapsed(tmp_path):
    """A Draco GLB was reported as absurd_size ("collapsed"): trimesh filled its accessors with zeros."""
    c = next(c for c in H.CASES if c.id == "glb-draco")
    c.build(tmp_path, tmp_path, c.id)
    report = check_asset("p", tmp_path / "glb-draco.glb")
    assert report.reason == "unsupported_compression" and "pip install DracoPy" in report.message


# ---------------------------------------------------------------------------------------------- zero-area faces


def test_a_mesh_of_zero_area_faces_is_degenerate(tmp_path):
    path = M.ascii_ply(tmp_path / "line.ply", [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)], [(0, 1, 2), (1, 2, 3)])
    report = check_asset("p", path)
    assert report.reason == "degenerate" and "2 faces" in report.message
    point = M.ascii_ply(tmp_path / "pt.ply", [(1, 1, 1)] * 3, [(0, 1, 2)])
    assert _reason(point) == "absurd_size"  # collapsed to one point: still absurd_size


def test_zero_area_faces_are_dropped_and_counted(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0]], float)
    good = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    zero = np.tile([0, 1, 4], (5000, 1))  # collinear corners
    faces = np.vstack([zero[:2500], good, zero[2500:]])
    mesh = trimesh.Trimesh(v, faces, process=False)
    colours = np.tile([10, 20, 30, 255], (len(faces), 1)).astype(np.uint8)
    colours[2500:2504, :3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]]
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=colours)
    mesh.export(tmp_path / "m.ply")
    asset = load_asset(tmp_path / "m.ply", normalise=False)
    assert asset.zero_area_faces == 5000 and asset.n_faces == 4 and asset.n_vertices == 4
    kept = asset.meshes[0]
    assert kept.visual.face_colors[:, :3].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]]
    np.testing.assert_allclose(face_areas(kept.vertices, kept.faces), kept.area_faces)  # against trimesh
    assert check_asset("p", tmp_path / "m.ply").zero_area_faces == 5000


def test_drop_zero_area_faces_uses_the_bound_relative_to_the_extent():
    # a 1000-unit triangle and a sliver of area 1e-5 (relative 1e-11 < 1e-10: dropped) and one of 1e-3 (kept)
    v = np.array([[0, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 0], [1, 0, 0], [0.5, 2e-5, 0], [0.5, 2e-3, 0]])
    m = trimesh.Trimesh(v, [[0, 1, 2], [3, 4, 5], [3, 4, 6]], process=False)
    [out], dropped = drop_zero_area_faces([m])
    assert dropped == 1 and len(out.faces) == 2


def test_degenerate_faces_metric_counts_the_dropped_faces(tmp_path):
    from mme3dr.metrics.base import ScoreItem
    from mme3dr.metrics.geometry import GeometryMetric

    text = H.ascii_ply_header(5, 14) + "0 0 0\n1 0 0\n0 1 0\n0 0 1\n2 0 0\n" + "3 0 1 4\n" * 10 + \
        "3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n"
    (tmp_path / "t.ply").write_text(text)
    res = GeometryMetric().score(ScoreItem("p", "spatial", "x", asset_path=tmp_path / "t.ply"))
    assert res.values["degenerate_faces"] == pytest.approx(10 / 14) and res.details["n_faces"] == 14
    assert res.values["watertight"] == 1.0


# ------------------------------------------------------------------------------------------ the corpus, in-process


def test_every_corpus_asset_gets_its_reason_in_process(tmp_path):
    """The fast twin of test_hostile.py (which runs the CLI): each case through the folder adapter and
    :func:`check_asset`, in this process (the loader process does the reading)."""
    root, outside = tmp_path / "corpus", tmp_path / "outside"
    gen = FolderGenerator(str(H.build(root, outside) and root))
    wrong = []
    for case in H.CASES:
        req = GenerationRequest(case.id, "x", "spatial", 0, tmp_path / "out")
        try:
            path = gen.generate_one(req)
            got = "generation_failed" if not path.is_file() else check_asset(case.id, path.resolve()).reason
        except (FileNotFoundError, ValueError):
            got = "generation_failed"
        if got != case.reason:
            wrong.append((case.id, case.reason, got))
    assert not wrong
