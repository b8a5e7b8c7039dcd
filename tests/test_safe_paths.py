"""Names that come from outside (prompt ids, reference ids, Toys4K identifiers, symbolic links in an asset folder)
never lead a read, write or delete out of their root folder (issue 13, point 1)."""

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

import make_assets as M
from mme3dr.adapters import GenerationRequest, create_generator
from mme3dr.cli import app
from mme3dr.data import BenchmarkFormatError, PromptRecord, load_benchmark
from mme3dr.generation import GenerationRecord, generate_run, read_generations
from mme3dr.paths import UnsafePathError, check_id, child_path
from mme3dr.render.jobs import resolve_cameras
from mme3dr.render.presets import get_preset
from mme3dr.render.references import build_references
from mme3dr.render.runs import render_run

PRESET = get_preset("canonical").with_overrides(resolution=32, n_views=2)

#: Ids that must never reach the file system; each is refused on load and by child_path.
HOSTILE_IDS = ["../../sentinel", "../sentinel", "..", ".", "a/b", "a\\b", "/abs/path", "x/../../y", "nul\0byte",
               "./x", "a/..", ""]
#: Ids that child_path accepts (plain names) but the prompt-id rule refuses.
RULE_ONLY = ["a..b", ".hidden", "-dash-first", "with space", "ümlaut", "x" * 129, "trailing\n", "tab\tid"]


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (except ``skip``): kind, size, mtime and bytes, to prove nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if p == skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


@pytest.fixture
def outside(tmp_path):
    """A sentinel folder next to where runs go, with a file in it; ``tmp_path/RUN`` is the run."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "precious.txt").write_text("do not delete")
    M.vertex_coloured_glb(sentinel / "secret.glb")
    return sentinel


# ---- the helper -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE_IDS)
def test_child_path_refuses_names_that_leave_the_root(tmp_path, name):
    with pytest.raises(UnsafePathError, match="cannot be used as a file or folder name|outside"):
        child_path(tmp_path, name)
    with pytest.raises(UnsafePathError):
        child_path(tmp_path, "ok", name)


def test_child_path_follows_symbolic_links(tmp_path, outside):
    root = tmp_path / "root"
    (root / "inner").mkdir(parents=True)
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "inner")
    (root / "self").symlink_to(root)
    with pytest.raises(UnsafePathError, match="outside"):
        child_path(root, "out")
    with pytest.raises(UnsafePathError, match="outside"):
        child_path(root, "out", "precious.txt")
    with pytest.raises(UnsafePathError):  # the root itself is not a child
        child_path(root, "self")
    assert child_path(root, "in", "x") == root / "in" / "x"  # a link that stays inside is fine
    assert child_path(root, "not-yet", "there") == root / "not-yet" / "there"  # need not exist
    assert child_path(str(root), "a..b") == root / "a..b"  # a plain name, not a parent reference


@pytest.mark.parametrize("name", HOSTILE_IDS + RULE_ONLY)
def test_prompt_id_rule(name):
    with pytest.raises(UnsafePathError, match=r"\^\[A-Za-z0-9\]"):
        check_id(name)
    for ok in ("spatial-001", "A", "9", "a.b_c-d", "x" * 128):
        assert check_id(ok) == ok


# ---- loading prompts ------------------------------------------------------------------------------------------

def _row(pid, prompt="A red cube with two handles."):
    return {"id": pid, "category": "spatial", "prompt": prompt, "object_class": "cube", "source": "authored",
            "checklist": []}


@pytest.mark.parametrize("name", [n for n in HOSTILE_IDS + RULE_ONLY if n.strip() == n and n])  # ids are stripped
def test_unsafe_ids_are_refused_on_load(tmp_path, name):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(_row("fine-1")) + "\n" + json.dumps(_row(name)) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"row 2 .*not a safe id.*\^\[A-Za-z0-9\]"):
        load_benchmark(source=src)


def test_ids_differing_only_in_case_are_refused(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(_row("Chair-1")) + "\n" + json.dumps(_row("chair-1")) + "\n")
    with pytest.raises(BenchmarkFormatError, match="row 2: id 'chair-1' differs only in case from 'Chair-1' in row 1"):
        load_benchmark(source=src)


def test_generate_cli_refuses_a_hostile_prompt_file(tmp_path, outside):
    assets = tmp_path / "assets"
    assets.mkdir()
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(_row("../../sentinel")) + "\n")
    before = snapshot(tmp_path)
    res = CliRunner().invoke(app, ["generate", "--model", "folder", "-a", f"root={assets}", "--source", str(src),
                                   "--out", str(tmp_path / "RUN"), "--no-progress"])
    assert res.exit_code == 2 and "not a safe id" in res.output and "^[A-Za-z0-9]" in res.output
    assert snapshot(tmp_path) == before and not (tmp_path / "RUN").exists()


# ---- generation: ids that bypass the loader --------------------------------------------------------------------

@pytest.mark.parametrize("pid", ["../../sentinel", "../sentinel", "..", "a/b", "ABS"])
def test_generate_run_never_touches_anything_outside_the_run(tmp_path, outside, pid):
    """A PromptRecord built by hand (no loader) with a hostile id: the old ``_fresh_dir`` deleted and recreated
    ``RUN/assets/<id>``, i.e. the sentinel folder next to the run, or any absolute path."""
    pid = str(outside) if pid == "ABS" else pid
    run = tmp_path / "work" / "RUN"
    (tmp_path / "work").mkdir()
    if pid == "../../sentinel":  # RUN/assets/../../sentinel is tmp/work/sentinel: put one there too
        (tmp_path / "work" / "sentinel").mkdir()
        (tmp_path / "work" / "sentinel" / "precious.txt").write_text("keep")
    gen = create_generator("folder", root=str(outside))
    good = PromptRecord("good-1", "spatial", "A box.", "box", "authored")
    bad = PromptRecord(pid, "spatial", "A box.", "box", "authored")
    before = snapshot(tmp_path, skip=run)
    with pytest.raises(UnsafePathError, match="prompt id"):
        generate_run(gen, [good, bad], run, progress=False)
    assert snapshot(tmp_path, skip=run) == before
    assert not run.exists()  # refused before anything is written


def test_fresh_dir_refuses_a_planted_symlink(tmp_path, outside):
    run = tmp_path / "RUN"
    (run / "assets").mkdir(parents=True)
    (run / "assets" / "spatial-001").symlink_to(outside)
    before = snapshot(tmp_path, skip=run)
    gen = create_generator("folder", root=str(outside))
    with pytest.raises(UnsafePathError, match="outside"):
        generate_run(gen, load_benchmark(limit=1), run, progress=False)
    assert snapshot(tmp_path, skip=run) == before


# ---- the folder adapter ----------------------------------------------------------------------------------------

def test_folder_adapter_reads_nothing_outside_its_root(tmp_path, outside):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    ids = [r.id for r in load_benchmark(limit=6)]
    (root / f"{ids[0]}.glb").symlink_to(outside / "secret.glb")  # a file link out
    (root / ids[1]).symlink_to(outside)  # a folder link out (holds secret.glb)
    (root / ids[2]).mkdir()
    (root / ids[2] / "mesh.glb").symlink_to(outside / "secret.glb")  # a link out inside a prompt folder
    M.vertex_coloured_glb(root / f"{ids[3]}.glb")  # a plain file
    M.vertex_coloured_glb(root / "real" / "inside.glb")
    (root / f"{ids[4]}.glb").symlink_to(root / "real" / "inside.glb")  # a link that stays inside: fine
    (root / f"{ids[5]}.glb").symlink_to(Path("..") / "sentinel" / "secret.glb")  # relative link out
    run = tmp_path / "RUN"
    before = snapshot(outside)
    summary = generate_run(create_generator("folder", root=str(root)), load_benchmark(limit=6), run, progress=False)
    recs = read_generations(run)
    assert summary.generated == 2 and summary.failed == 4
    for pid in (ids[0], ids[1], ids[2], ids[5]):
        assert recs[pid].asset_path is None and "UnsafePathError" in recs[pid].error and "outside" in recs[pid].error
    assert Path(recs[ids[3]].asset_path) == (root / f"{ids[3]}.glb").resolve()
    assert Path(recs[ids[4]].asset_path) == (root / "real" / "inside.glb").resolve()
    for rec in recs.values():  # no record points out of the root
        assert rec.asset_path is None or (root.resolve() in Path(rec.asset_path).resolve().parents)
    assert snapshot(outside) == before
    gen = create_generator("folder", root=str(root))
    for pid in ("../sentinel/secret", "/abs", "a/b", ".."):
        [res] = gen.generate([GenerationRequest(pid, "p", "spatial", 0, tmp_path)])
        assert res.error.startswith("UnsafePathError")


# ---- later stages: ids read back from a run folder someone edited ----------------------------------------------

def _plant(run: Path, pid: str, asset: Path) -> None:
    rec = GenerationRecord(pid, "spatial", "A box.", 0, {"name": "folder", "args": {}}, str(asset), None, "+z", 0.1)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "generations.jsonl", "a") as f:
        f.write(json.dumps(asdict(rec)) + "\n")


def test_render_refuses_a_planted_id_and_records_why(tmp_path, outside):
    run = tmp_path / "RUN"
    # RUN/renders/<tag>/../../../sentinel is tmp/sentinel: the old code replaced it with the views
    _plant(run, "../../../sentinel", outside / "secret.glb")
    _plant(run, "/" + str(outside).lstrip("/"), outside / "secret.glb")
    before = snapshot(tmp_path, skip=run)
    summary = render_run(run, PRESET, progress=False)
    assert summary.rendered == 0 and len(summary.failed) == 2
    assert {r.reason for r in summary.failed} == {"unsafe_path"} and all("prompt id" in r.error for r in summary.failed)
    index = [json.loads(line) for line in (run / "renders" / PRESET.tag / "renders.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in index} == {"unsafe_path"} and len(index) == 2
    assert snapshot(tmp_path, skip=run) == before


def test_camera_folder_lookup_stays_inside(tmp_path):
    (tmp_path / "cams").mkdir()
    with pytest.raises(UnsafePathError):
        resolve_cameras(tmp_path / "cams", "../x")
    assert resolve_cameras(tmp_path / "cams", "a-1") == str(tmp_path / "cams" / "a-1" / "transforms.json")


def test_score_refuses_a_planted_id(tmp_path, outside):
    from mme3dr.scoring import score_run

    run = tmp_path / "RUN"
    _plant(run, "../../../sentinel", outside / "secret.glb")
    before = snapshot(tmp_path, skip=run)
    summary = score_run(run, ["geometry"], PRESET, progress=False)
    [(pid, err)] = summary.errors["geometry"]
    assert pid == "../../../sentinel" and "cannot be used as a file or folder name" in err
    assert snapshot(tmp_path, skip=run) == before


def test_references_refuse_hostile_csv_rows_and_links(tmp_path, outside):
    toys = tmp_path / "toys"
    (toys / "cls" / "obj").mkdir(parents=True)
    (toys / "cls" / "obj" / "m.glb").symlink_to(outside / "secret.glb")
    (toys / "cls" / "good").mkdir()
    M.vertex_coloured_glb(toys / "cls" / "good" / "m.glb")
    csv = tmp_path / "Toys4k.csv"
    csv.write_text("sha256,file_identifier\n"
                   "../../../sentinel,cls/good/m.blend\n"  # a hostile id: its output folder would be tmp/sentinel
                   "abc,../sentinel/x.blend\n"  # a hostile identifier: would read tmp/sentinel
                   f"def,{outside}/secret.glb\n"  # an absolute one
                   "ghi,cls/obj/m.blend\n")  # a link out of the Toys4K folder
    ref = tmp_path / "REF"
    outside_before = snapshot(outside)
    before = snapshot(tmp_path, skip=ref)
    summary = build_references(ref, PRESET, toys4k=toys, toys4k_csv=csv, progress=False)
    assert summary.rendered == 0
    objs = {o["id"]: o for o in json.loads((ref / PRESET.tag / "reference.json").read_text())["objects"]}
    assert set(objs) == {"../../../sentinel", "abc", "def", "ghi"} and not any(o["ok"] for o in objs.values())
    assert all("outside" in o["error"] or "file or folder name" in o["error"] for o in objs.values())
    assert snapshot(tmp_path, skip=ref) == before
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    (meshes / "link.glb").symlink_to(outside / "secret.glb")
    summary = build_references(tmp_path / "REF2", PRESET, meshes=meshes, progress=False)
    [o] = json.loads((tmp_path / "REF2" / PRESET.tag / "reference.json").read_text())["objects"]
    assert o["id"] == "link" and not o["ok"] and "outside" in o["error"]
    assert snapshot(outside) == outside_before
