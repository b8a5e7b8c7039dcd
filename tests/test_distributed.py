"""Several processes through torch.distributed (gloo, CPU): `torchrun --nproc_per_node 2` leaves the run folder as
one process does — the same generations, renders, render index, score records (in the same order), feature caches
and set metrics — and the CLI runs under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import tiny_clip
import tiny_features
from mme3dr import runfiles
from mme3dr.distributed import Ranks
from mme3dr.render.references import build_references

sys.path.insert(0, str(Path(__file__).parent))
from dist_evaluate import LIMIT, PRESET  # noqa: E402
from test_evaluate import make_assets  # noqa: E402

SCRIPT = Path(__file__).parent / "dist_evaluate.py"


def launch(args: list[str], nproc: int, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            if nproc > 1 else [sys.executable])
    return subprocess.run(head + args, env=env, cwd=tmp, capture_output=True, text=True, timeout=900)


def without_seconds(path: Path) -> list[dict]:
    """The rows of a JSON-lines file without their timing fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "finished_at")}
            for line in path.read_text().splitlines()]


def features(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as data:
            out[f.name] = dict(zip(data["keys"].tolist(), data["features"]))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    make_assets(tmp / "assets")
    (tmp / "meshes" / "spatial").mkdir(parents=True)
    for i in range(3):
        trimesh.creation.icosphere(subdivisions=1).apply_scale((1, 0.5 + 0.3 * i, 0.7)).export(
            tmp / "meshes" / "spatial" / f"s{i}.ply")
    build_references(tmp / "REF", PRESET, meshes=tmp / "meshes", progress=False)
    (tmp / "w").mkdir()
    tiny_clip.tiny_clip_checkpoint(tmp / "w")
    tiny_features.random_inception_weights(tmp / "w" / "inc.pth")
    tiny_features.tiny_dinov2(tmp / "w" / "dino")
    return tmp


def test_shards_are_strided_and_cover_everything():
    seq = list(range(11))
    shards = [Ranks(r, 3).shard(seq) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert all(Ranks(r, 3).mine(i) == (i in shards[r]) for r in range(3) for i in seq)
    assert Ranks().gather("x") == ["x"] and Ranks().everywhere("x") == ["x"] and Ranks().main


@pytest.mark.slow
def test_two_processes_leave_the_run_folder_as_one_does(setup):
    tmp = setup
    runs = {}
    for nproc in (1, 2):
        ref = tmp / f"REF{nproc}"  # each run computes the reference features itself (sharded with 2 processes)
        if not ref.exists():
            import shutil

            shutil.copytree(tmp / "REF", ref)
        out = tmp / f"RUN{nproc}"
        res = launch([str(SCRIPT), str(out), str(tmp / "assets"), str(ref), str(tmp / "w")], nproc, tmp)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[nproc] = (out, ref)
    (one, ref1), (two, ref2) = runs[1], runs[2]
    assert without_seconds(one / runfiles.GENERATIONS) == without_seconds(two / runfiles.GENERATIONS)
    scores1, scores2 = without_seconds(one / "scores.jsonl"), without_seconds(two / "scores.jsonl")
    assert len(scores1) == 2 * (LIMIT - 1)  # clip + geometry of each generated prompt (one has no asset)
    assert scores1 == scores2  # the same records in the same order
    sets1, sets2 = (json.loads((r / "set_scores.json").read_text().replace(str(ref), "REF"))
                    for r, ref in ((one, ref1), (two, ref2)))
    assert set(sets1) == {"kid", "fid", "kid_dinov2"} and sets1 == sets2
    folder1, folder2 = (r / runfiles.RENDERS_DIR / PRESET.tag for r in (one, two))
    index1, index2 = (without_seconds(f / runfiles.RENDER_INDEX) for f in (folder1, folder2))
    assert [{**r, "folder": r["folder"].replace(str(one), "RUN")} for r in index1] == \
        [{**r, "folder": r["folder"].replace(str(two), "RUN")} for r in index2]
    views1 = sorted(p.relative_to(folder1) for p in folder1.rglob("[0-9][0-9][0-9].png"))
    assert views1 and views1 == sorted(p.relative_to(folder2) for p in folder2.rglob("[0-9][0-9][0-9].png"))
    assert all((folder1 / v).read_bytes() == (folder2 / v).read_bytes() for v in views1)
    for a, b in ((folder1 / runfiles.FEATURES_DIR, folder2 / runfiles.FEATURES_DIR),
                 (ref1 / PRESET.tag / runfiles.FEATURES_DIR, ref2 / PRESET.tag / runfiles.FEATURES_DIR)):
        fa, fb = features(a), features(b)
        assert fa and list(fa) == list(fb)
        for name in fa:  # view keys name their run / reference folder
            other = {k.replace(str(one), str(two)).replace(str(ref1), str(ref2)): k for k in fa[name]}
            assert set(other) == set(fb[name])
            for k2, k1 in other.items():
                np.testing.assert_allclose(fb[name][k2], fa[name][k1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_cli_runs_under_torchrun(setup, tmp_path):
    out = tmp_path / "RUN"
    args = ["-m", "mme3dr", "evaluate", "--model", "folder", "--model-arg", f"root={setup / 'assets'}", "--metrics",
            "geometry", "--limit", "4", "--resolution", "32", "--out", str(out), "--no-progress"]
    res = launch(args, 2, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("geometry: 4 scored") == 1  # rank 0 prints the summary of every prompt, once
    assert len((out / "scores.jsonl").read_text().splitlines()) == 4
