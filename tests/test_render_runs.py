import json

import numpy as np
import pytest
import trimesh
from PIL import Image

import make_assets as M
from mme3dr.adapters import Generator, ModelSpec
from mme3dr.data import load_benchmark
from mme3dr.generation import generate_run
from mme3dr.render.presets import get_preset
from mme3dr.render.references import REFERENCE_FILE, build_references
from mme3dr.render.runs import render_run


class Shapes(Generator):
    """A different small mesh per prompt; prompt 2 writes a corrupt file."""

    def generate_one(self, request):
        i = int(request.prompt_id.rsplit("-", 1)[1]) + len(request.category)
        path = request.output_dir / "mesh.glb"
        if request.prompt_id.endswith("-002"):
            path.write_bytes(b"not a glb")
            return path
        trimesh.creation.box(extents=(1, 0.2 + 0.1 * i, 0.5)).export(path)
        return path


@pytest.fixture
def run(tmp_path):
    prompts = load_benchmark(categories=["spatial", "stylized"], limit=4)
    generate_run(Shapes(), prompts, tmp_path / "RUN", model_spec=ModelSpec("shapes"), progress=False)
    return tmp_path / "RUN"


def test_render_run_records_bad_assets_and_resumes(run):
    preset = get_preset("canonical").with_overrides(resolution=64, n_views=4)
    s = render_run(run, preset, progress=False)
    assert s.rendered == 2 and {r.key for r in s.failed} == {"spatial-002", "stylized-002"}
    assert all(r.reason == "unreadable" for r in s.failed)
    folder = run / "renders" / preset.tag
    index = [json.loads(l) for l in (folder / "renders.jsonl").read_text().splitlines()]
    assert len(index) == 4 and sum(r["ok"] for r in index) == 2
    assert (folder / "spatial-001" / "contact_sheet.png").is_file()
    first = np.asarray(Image.open(folder / "spatial-001" / "000.png"))
    again = render_run(run, preset, progress=False)
    assert again.rendered == 0 and again.skipped == 2  # up to date: nothing redone
    other = render_run(run, preset.with_overrides(background="white"), progress=False)
    assert other.rendered == 2 and other.folder != s.folder  # a new preset hash, a new folder
    assert first.shape == (64, 64, 4)


def test_worker_processes_give_the_same_pixels(run):
    import shutil

    preset = get_preset("canonical").with_overrides(resolution=48, n_views=3)
    multi = render_run(run, preset, workers=2, progress=False)
    folder = run / "renders" / preset.tag
    views = {p.relative_to(folder): np.asarray(Image.open(p)) for p in folder.glob("*/0*.png")}
    shutil.rmtree(folder)
    single = render_run(run, preset, workers=1, progress=False)
    assert multi.rendered == single.rendered == 2 and len(views) == 6
    for rel, img in views.items():
        np.testing.assert_array_equal(np.asarray(Image.open(folder / rel)), img)


def test_compat_preset_needs_cameras(run, tmp_path):
    compat = get_preset("ar3d-r1-compat").with_overrides(resolution=32)
    s = render_run(run, compat, progress=False)
    assert s.rendered == 0 and all("--cameras" in (r.error or "") or r.reason == "unreadable" for r in s.failed)
    cams = tmp_path / "cams"
    (cams / "spatial-001").mkdir(parents=True)
    from mme3dr.render.cameras import CameraSet, hammersley_poses, transforms_dict

    (cams / "spatial-001" / "transforms.json").write_text(json.dumps(
        transforms_dict(CameraSet(hammersley_poses(3, 2.0, (0.3, 0.3)), 0.7), ["a", "b", "c"])))
    s = render_run(run, compat, cameras=cams, progress=False)
    assert s.rendered == 1  # spatial-001 has cameras; stylized-001 has none and fails clearly
    fails = {r.key: r for r in s.failed}
    assert fails["stylized-001"].reason == "cameras"
    img = Image.open(run / "renders" / compat.tag / "spatial-001" / "000.png")
    assert img.mode == "RGB" and img.size == (32, 32)


def test_reference_sets_from_folders_and_toys4k(tmp_path):
    meshes = tmp_path / "meshes"
    (meshes / "chair").mkdir(parents=True)
    M.vertex_coloured_glb(meshes / "chair" / "c1.glb")
    M.ascii_ply(meshes / "loose.ply", M.TETRA_V, M.TETRA_F)
    preset = get_preset("canonical").with_overrides(resolution=32, n_views=2)
    s = build_references(tmp_path / "REF", preset, meshes=meshes, progress=False)
    assert s.rendered == 2
    ref = json.loads((tmp_path / "REF" / preset.tag / REFERENCE_FILE).read_text())
    assert ref["preset_hash"] == preset.hash and ref["n_ok"] == 2
    assert {(o["id"], o["source_class"], o["category"]) for o in ref["objects"]} == {
        ("chair__c1", "chair", None), ("loose", None, None)}  # "chair" is not an MME-3DR category

    toys = tmp_path / "toys4k"
    (toys / "airplane" / "airplane_000").mkdir(parents=True)
    M.vertex_coloured_glb(toys / "airplane" / "airplane_000" / "mesh.glb")
    csv = tmp_path / "Toys4k.csv"
    csv.write_text("sha256,file_identifier,captions\n"
                   "aaa,airplane/airplane_000/airplane_000.blend,[]\n"
                   "bbb,dog/dog_001/dog_001.blend,[]\n")
    s = build_references(tmp_path / "REF2", preset, toys4k=toys, toys4k_csv=csv, progress=False)
    ref = json.loads((tmp_path / "REF2" / preset.tag / REFERENCE_FILE).read_text())
    objs = {o["id"]: o for o in ref["objects"]}
    assert objs["aaa"]["ok"] and objs["aaa"]["source_class"] == "airplane" and objs["aaa"]["category"] is None
    assert not objs["bbb"]["ok"] and "no mesh file" in objs["bbb"]["error"]
    assert s.not_generated == ["bbb"]
    with pytest.raises(ValueError, match="exactly one source"):
        build_references(tmp_path / "R3", preset)


def test_reference_category_map_from_csv_json_and_the_cli(tmp_path):
    """Issue 12: Toys4K classes never equal MME-3DR categories; a map file assigns them, by object id, source path
    or class, so per-category KID compares against the right objects."""
    from typer.testing import CliRunner

    from mme3dr.cli import app
    from mme3dr.render.references import read_category_map

    toys = tmp_path / "toys4k"
    for ident in ("airplane/airplane_000", "airplane/airplane_001", "dog/dog_000", "cup/cup_000"):
        (toys / ident).mkdir(parents=True)
        M.vertex_coloured_glb(toys / ident / "mesh.glb")
    csv = tmp_path / "Toys4k.csv"
    csv.write_text("sha256,file_identifier\n" + "".join(
        f"s{i},{ident}/{ident.split('/')[1]}.blend\n"
        for i, ident in enumerate(("airplane/airplane_000", "airplane/airplane_001", "dog/dog_000", "cup/cup_000"))))
    cmap = tmp_path / "map.csv"
    cmap.write_text("object,category,comment\n"
                    "s0,mechanical,by id\n"
                    "airplane/airplane_001/airplane_001.blend,spatial,by source path\n"
                    "dog,Biological & Organic Shapes,by class (display name)\n"
                    "zzz,stylized,matches nothing\n")
    assert read_category_map(cmap) == {"s0": "mechanical", "airplane/airplane_001/airplane_001.blend": "spatial",
                                       "dog": "biological", "zzz": "stylized"}
    preset = get_preset("canonical").with_overrides(resolution=32, n_views=2)
    build_references(tmp_path / "REF", preset, toys4k=toys, toys4k_csv=csv, progress=False, category_map=cmap)
    ref = json.loads((tmp_path / "REF" / preset.tag / REFERENCE_FILE).read_text())
    cats = {o["id"]: o["category"] for o in ref["objects"]}
    assert cats == {"s0": "mechanical", "s1": "spatial", "s2": "biological", "s3": None}
    assert ref["category_map"]["unmatched"] == ["zzz"] and ref["category_map"]["objects_per_category"]["spatial"] == 1

    build_references(tmp_path / "REFD", preset, toys4k=toys, toys4k_csv=csv, progress=False,
                     category_map={"s0": "world_knowledge", "cup": "stylized"})  # the Python API takes a dict too
    refd = json.loads((tmp_path / "REFD" / preset.tag / REFERENCE_FILE).read_text())
    assert {o["id"]: o["category"] for o in refd["objects"]} == {"s0": "world-knowledge", "s1": None, "s2": None,
                                                                 "s3": "stylized"}

    meshes = tmp_path / "meshes"  # the CLI, with a JSON map keyed by class, on a one-object folder
    (meshes / "dog").mkdir(parents=True)
    M.vertex_coloured_glb(meshes / "dog" / "d0.glb")
    jmap = tmp_path / "map.json"
    jmap.write_text(json.dumps({"dog": "biological"}))
    args = ["references", "build", "--out", str(tmp_path / "REFJ"), "--meshes", str(meshes), "--preset", "reward6",
            "--no-progress", "--category-map"]
    res = CliRunner().invoke(app, [*args, str(jmap)])
    assert res.exit_code == 0, res.output
    assert "biological 1, world-knowledge 0" in res.output and "world-knowledge, stylized use the whole set" in res.output
    refj = json.loads(next((tmp_path / "REFJ").glob(f"*/{REFERENCE_FILE}")).read_text())
    assert [(o["id"], o["category"]) for o in refj["objects"]] == [("dog__d0", "biological")]
    jmap.write_text(json.dumps({"cat": "biological"}))
    res = CliRunner().invoke(app, [*args, str(jmap)])
    assert res.exit_code == 2 and "matches no reference object" in res.output

    bad = tmp_path / "bad.csv"
    bad.write_text("object,category\ns0,furniture\n")
    with pytest.raises(ValueError, match="unknown category 'furniture'"):
        read_category_map(bad)
    bad.write_text("obj,cat\ns0,spatial\n")
    with pytest.raises(ValueError, match="columns object,category"):
        read_category_map(bad)
    with pytest.raises(ValueError, match="matches no reference object"):
        build_references(tmp_path / "R4", preset, toys4k=toys, toys4k_csv=csv, progress=False,
                         category_map={"nothing": "spatial"})
