"""Nothing outside the run changes, and nothing the run did not ask for leaks in (issue 13, point 8): the commit is
read without writing to the toolkit's repository; a user's Python module is imported without putting the current
directory on ``sys.path``; the VLM judge asks the checklist of the prompt set the run was generated from."""

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trimesh

from mme3dr.adapters import Generator, ModelSpec, create_generator
from mme3dr.data import load_benchmark
from mme3dr.generation import generate_run
from mme3dr.metrics.vlm import VLMJudge
from mme3dr.render.presets import get_preset
from mme3dr.render.runs import render_run
from mme3dr.runinfo import git_commit
from mme3dr.scoring import BuiltMetrics, PromptSetMismatchError, score_run

REPO = Path(__file__).resolve().parents[1]


# ---- the commit is read, the repository is not written --------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _index_state(repo: Path) -> tuple:
    st = (repo / ".git" / "index").stat()
    return st.st_ino, st.st_mtime_ns, (repo / ".git" / "index").read_bytes(), (repo / ".git" / "index.lock").exists()


@pytest.fixture
def stale_repo(tmp_path):
    """A checkout whose index is stale: a tracked file's time stamps changed, so ``git status`` rewrites the index."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "toolkit"
    (repo / "mme3dr").mkdir(parents=True)
    (repo / "mme3dr" / "x.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    os.utime(repo / "mme3dr" / "x.py", ns=(10**18, 10**18))
    return repo


def test_git_status_would_write_the_index(stale_repo, tmp_path):
    """The control: what the old ``git_commit`` ran rewrites ``.git/index`` of such a checkout."""
    copy = tmp_path / "copy"
    shutil.copytree(stale_repo, copy, symlinks=True)
    before = _index_state(copy)
    _git(copy, "status", "--porcelain", "--untracked-files=no")
    assert _index_state(copy) != before


def test_git_commit_reads_without_writing(stale_repo, monkeypatch):
    from mme3dr import runinfo

    # as if the toolkit were imported from that checkout: git_commit() looks where the package lives
    monkeypatch.setattr(runinfo, "__file__", str(stale_repo / "mme3dr" / "runinfo.py"))
    head = _git(stale_repo, "rev-parse", "HEAD")
    before = _index_state(stale_repo)
    assert git_commit() == head
    assert _index_state(stale_repo) == before
    (stale_repo / "mme3dr" / "x.py").write_text("x = 2\n")
    before = _index_state(stale_repo)
    assert git_commit() == head + "+dirty"
    assert _index_state(stale_repo) == before


def test_git_commit_ignores_an_enclosing_repository(stale_repo):
    """A package folder inside someone else's repository (a venv in a project) is not that repository's commit."""
    (stale_repo / "venv" / "site-packages").mkdir(parents=True)
    assert git_commit(stale_repo / "venv" / "site-packages") is None
    assert git_commit(stale_repo / "mme3dr") is None


def test_git_commit_of_this_checkout_writes_nothing():
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    git_dir = Path(subprocess.run(["git", "-C", str(REPO), "rev-parse", "--absolute-git-dir"], capture_output=True,
                                  text=True).stdout.strip())
    index = git_dir / "index"
    before = index.stat().st_mtime_ns if index.exists() else None
    assert (git_commit(REPO) or "").startswith(_git(REPO, "rev-parse", "HEAD"))
    assert (index.stat().st_mtime_ns if index.exists() else None) == before


# ---- the python adapter does not change how other modules are found ---------------------------------------------

USER_MODULE = """
    import trimesh
    import helper_mod
    from mme3dr.adapters import Generator

    class Gen(Generator):
        def generate_one(self, request):
            path = request.output_dir / helper_mod.NAME
            trimesh.creation.box().export(path)
            return path
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The current directory holds the user's module, a sibling it imports, a package, and a ``matplotlib.py``
    (a script someone named after the library) that must never replace the real one."""
    (tmp_path / "user_mod.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "helper_mod.py").write_text("NAME = 'box.glb'\n")
    (tmp_path / "user_pkg").mkdir()
    (tmp_path / "user_pkg" / "__init__.py").write_text("")
    (tmp_path / "user_pkg" / "gen.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "matplotlib.py").write_text("raise RuntimeError('the local matplotlib.py was imported')\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("user_mod", "helper_mod", "user_pkg", "user_pkg.gen"):
        sys.modules.pop(name, None)


def test_python_adapter_leaves_sys_path_alone(user_dir):
    path_before = list(sys.path)
    gen = create_generator("python", factory="user_mod:Gen")
    [res] = gen.generate([_request(user_dir)])
    assert res.ok and res.asset_path.name == "box.glb"  # the module and its sibling were found
    assert create_generator("python", factory="user_pkg.gen:Gen") is not None  # a local package too
    assert sys.path == path_before  # nothing added for the rest of the process
    spec = importlib.machinery.PathFinder.find_spec("matplotlib")
    assert spec is not None and Path(spec.origin).parent != user_dir  # the installed one is what `import` finds


def test_a_local_module_named_like_a_loaded_one_is_an_error(user_dir):
    (user_dir / "json.py").write_text("def factory(): pass\n")
    with pytest.raises(ImportError, match="already loaded"):
        create_generator("python", factory="json:factory")


def test_report_stage_imports_the_real_matplotlib(user_dir, tmp_path_factory):
    """In a fresh process (nothing imported yet), as `mme3dr evaluate` runs: after the python adapter has imported
    the user's module, the report's ``import matplotlib`` must get the installed library, not ./matplotlib.py."""
    script = tmp_path_factory.mktemp("script") / "run.py"  # outside the current directory: sys.path[0] is its folder
    script.write_text("from mme3dr.adapters import create_generator\n"
                      "create_generator('python', factory='user_mod:Gen')\n"
                      "import matplotlib\nprint(matplotlib.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(script)], cwd=user_dir, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()).parent != user_dir and "site-packages" in res.stdout


def _request(folder: Path):
    from mme3dr.adapters import GenerationRequest

    out = folder / "out"
    out.mkdir(exist_ok=True)
    return GenerationRequest("p-1", "a box", "spatial", 0, out)


# ---- the judge asks the run's own checklists -------------------------------------------------------------------

class Boxes(Generator):
    def generate_one(self, request):
        path = request.output_dir / "box.glb"
        trimesh.creation.box().export(path)
        return path


class RecordingVLM:
    """Answers every query; remembers the checklist questions it was asked."""

    kind, model, max_new_tokens, queries_per_call = "recording", "recording-vlm", 64, 4

    def __init__(self) -> None:
        self.asked: list[str] = []

    def generate(self, images, text: str) -> str:
        keys = [k for k in ("shape", "appearance", "parts", "category_match", "color_smoothness", "material",
                            "texture") if f'"{k}"' in text]
        qs = [f"q{i}" for i in range(1, 20) if f'"q{i}"' in text]
        starts = tuple(f"{q}: " for q in qs)
        self.asked += [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith(starts)]
        return json.dumps({**{k: 1 for k in keys}, **{q: "yes" for q in qs}})

    def generate_many(self, queries) -> list[str]:
        return [self.generate(images, text) for images, text in queries]


CUSTOM_CHECKS = [{"type": "part", "question": "Does the custom lamp have a pull chain?", "answer": "yes"},
                 {"type": "colour", "question": "Is the custom lamp shade green?", "answer": "yes"},
                 {"type": "count", "question": "Does the custom lamp have three legs?", "answer": "no"}]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """A run generated from a custom prompt file whose ids collide with the packaged set's."""
    tmp = tmp_path_factory.mktemp("custom")
    packaged = load_benchmark(limit=2)
    src = tmp / "mine.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "category": r.category, "prompt": f"A custom lamp number {i}.",
                                       "object_class": "lamp", "source": "authored", "checklist": CUSTOM_CHECKS})
                           + "\n" for i, r in enumerate(packaged)))
    run = tmp / "RUN"
    generate_run(Boxes(), load_benchmark(source=src), run, model_spec=ModelSpec("boxes"), progress=False)
    preset = get_preset("canonical").with_overrides(resolution=32, n_views=6)
    render_run(run, preset, progress=False)
    return run, src, preset, packaged


def test_the_run_records_where_its_prompts_came_from(custom_run):
    run, src, _, _ = custom_run
    info = json.loads((run / "run.json").read_text())
    assert info["prompts"]["location"] == str(src.resolve()) and info["prompts"]["n"] == 2


def test_judge_asks_the_run_s_own_checklists(custom_run):
    run, _, preset, packaged = custom_run
    (run / "scores.jsonl").unlink(missing_ok=True)
    vlm = RecordingVLM()
    built = BuiltMetrics({"vlm": VLMJudge(vlm)}, {})
    summary = score_run(run, ["vlm"], preset, progress=False, built=built)
    assert summary.scored["vlm"] == 2 and not summary.errors["vlm"]
    assert vlm.asked == [c["question"] for c in CUSTOM_CHECKS] * 2
    assert not {c.question for r in packaged for c in r.checklist} & set(vlm.asked)


def test_a_run_without_its_prompt_source_is_refused_not_misjudged(custom_run, tmp_path):
    """Without a recorded source the packaged set is the default, whose texts differ: an error, never the
    packaged questions. Naming the file (``--source``) scores it; an edited file is refused as well."""
    run, src, preset, _ = custom_run
    copy = tmp_path / "RUN"
    shutil.copytree(run, copy)
    (copy / "scores.jsonl").unlink(missing_ok=True)
    info = json.loads((copy / "run.json").read_text())
    del info["prompts"]
    (copy / "run.json").write_text(json.dumps(info))
    vlm = RecordingVLM()
    built = BuiltMetrics({"vlm": VLMJudge(vlm)}, {})
    with pytest.raises(PromptSetMismatchError, match=r"2 generated prompt\(s\).*other text there.*--source"):
        score_run(copy, ["vlm"], preset, progress=False, built=built)
    assert vlm.asked == []
    assert score_run(copy, ["vlm"], preset, progress=False, built=built, source=str(src)).scored["vlm"] == 2
    assert vlm.asked == [c["question"] for c in CUSTOM_CHECKS] * 2
    edited = tmp_path / "edited.jsonl"
    edited.write_text(src.read_text().replace("A custom lamp number 1.", "A different lamp."))
    with pytest.raises(PromptSetMismatchError):
        score_run(copy, ["vlm"], preset, progress=False, built=built, source=str(edited))
    assert score_run(copy, ["geometry"], preset, progress=False).scored["geometry"] == 2  # no checklist needed
