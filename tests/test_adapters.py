import sys
import textwrap
import time
from pathlib import Path

import pytest

import make_assets as M
from mme3dr.adapters import GenerationRequest, GenerationResult, Generator, create_generator
from mme3dr.adapters.command import CommandGenerator

PY = sys.executable


def _req(tmp_path, pid="spatial-001", prompt='A "quoted" prompt; with $HOME & spaces.', seed=7):
    out = tmp_path / "out" / pid
    out.mkdir(parents=True)
    return GenerationRequest(pid, prompt, "spatial", seed, out)


def _script(tmp_path, body):
    path = tmp_path / "gen.py"
    path.write_text(textwrap.dedent(body))
    return path


WRITE_BOX = """
    import sys, pathlib, trimesh
    args = sys.argv[1:]
    pathlib.Path(args[-1]).with_suffix(".args").write_text("\\n".join(args))
    trimesh.creation.box().export(args[-1])
"""


def test_folder_flat_nested_missing_ambiguous(tmp_path):
    M.vertex_coloured_glb(tmp_path / "spatial-001.glb")
    (tmp_path / "spatial-002").mkdir()
    M.obj_with_mtl(tmp_path / "spatial-002", "mesh")
    M.vertex_coloured_glb(tmp_path / "spatial-003.glb")
    M.ascii_ply(tmp_path / "spatial-003.ply", M.TETRA_V, M.TETRA_F)
    gen = create_generator("folder", root=str(tmp_path), up_axis="y")
    reqs = [_req(tmp_path, f"spatial-00{i}") for i in (1, 2, 3, 4)]
    r1, r2, r3, r4 = gen.generate(reqs)
    assert r1.ok and r1.asset_path == (tmp_path / "spatial-001.glb").resolve() and r1.up_axis == "+y"
    assert r2.ok and r2.asset_path.name == "mesh.obj"
    assert not r3.ok and "several assets" in r3.error
    assert not r4.ok and "no asset for spatial-004" in r4.error
    with pytest.raises(FileNotFoundError, match="not a directory"):
        create_generator("folder", root=str(tmp_path / "nope"))


def test_command_passes_placeholders_as_single_argv_elements(tmp_path):
    script = _script(tmp_path, WRITE_BOX)
    gen = CommandGenerator(f"{PY} {script} --prompt {{prompt}} --file {{prompt_file}} --seed {{seed}} "
                           f"--id {{prompt_id}} --cat {{category}} {{output}}")
    req = _req(tmp_path)
    [res] = gen.generate([req])
    assert res.ok, res.error
    assert res.asset_path == req.output_dir.resolve() / "spatial-001.glb"
    args = res.asset_path.with_suffix(".args").read_text().split("\n")
    assert args[args.index("--prompt") + 1] == req.prompt  # no shell: quotes, $ and ; untouched
    assert Path(args[args.index("--file") + 1]).read_text() == req.prompt
    assert args[args.index("--seed") + 1] == "7" and args[args.index("--cat") + 1] == "spatial"
    log = (req.output_dir / "command.log").read_text()
    assert "exit status 0" in log and res.metadata["returncode"] == 0


def test_command_failure_is_recorded_with_its_log(tmp_path):
    script = _script(tmp_path, """
        import sys
        print("hello from stdout"); print("boom on stderr", file=sys.stderr); sys.exit(4)
    """)
    req = _req(tmp_path)
    [res] = CommandGenerator(f"{PY} {script} {{output}}").generate([req])
    assert not res.ok and "status 4" in res.error
    log = (req.output_dir / "command.log").read_text()
    assert "hello from stdout" in log and "boom on stderr" in log and "exit status 4" in log


def test_command_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "child_alive"
    script = _script(tmp_path, f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).touch()"])
        time.sleep(60)
    """)
    req = _req(tmp_path)
    start = time.perf_counter()
    [res] = CommandGenerator(f"{PY} {script} {{output}}", timeout=1).generate([req])
    assert time.perf_counter() - start < 10
    assert not res.ok and "timed out after 1 s" in res.error
    time.sleep(3.5)
    assert not marker.exists()  # the grandchild was killed with the group


def test_command_exit_zero_without_output(tmp_path):
    script = _script(tmp_path, "print('did nothing')\n")
    [res] = CommandGenerator(f"{PY} {script} {{output}}").generate([_req(tmp_path)])
    assert not res.ok and "wrote no file" in res.error


def test_command_output_dir_mode_picks_the_single_asset(tmp_path):
    script = _script(tmp_path, """
        import sys, trimesh
        trimesh.creation.box().export(sys.argv[1] + "/whatever.ply")
    """)
    [res] = CommandGenerator(f"{PY} {script} {{output_dir}}").generate([_req(tmp_path)])
    assert res.ok and res.asset_path.name == "whatever.ply"


def test_command_template_errors():
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['outptu'\]"):
        CommandGenerator(f"{PY} x.py {{outptu}}")
    with pytest.raises(ValueError, match="must contain {output}"):
        CommandGenerator(f"{PY} x.py {{prompt}}")
    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        CommandGenerator("no-such-program-xyz {output}")
    with pytest.raises(ValueError, match="ext"):
        CommandGenerator(f"{PY} x.py {{output}}", ext="fbx")


def test_python_adapter_factory_class_and_function(tmp_path, monkeypatch):
    (tmp_path / "user_model_mod.py").write_text(textwrap.dedent("""
        import trimesh
        from mme3dr.adapters import Generator
        class BoxGen(Generator):
            up_axis = "+y"
            def __init__(self, size: float = 1.0):
                self.size = size
            def generate_one(self, request):
                path = request.output_dir / "box.glb"
                trimesh.creation.box(extents=[self.size] * 3).export(path)
                return path
        def make(size=2.0):
            return BoxGen(size)
        def fn(request):
            path = request.output_dir / "f.stl"
            trimesh.creation.icosphere().export(path)
            return str(path)
        def bad_factory():
            return 3
    """))
    monkeypatch.chdir(tmp_path)  # the current directory is importable
    gen = create_generator("python", factory="user_model_mod:BoxGen", size=3.0)
    assert gen.size == 3.0 and gen.up_axis == "+y"
    assert create_generator("python", factory="user_model_mod:make", up_axis="z").up_axis == "+z"
    [res] = create_generator("python", function="user_model_mod:fn").generate([_req(tmp_path)])
    assert res.ok and res.asset_path.name == "f.stl"
    with pytest.raises(TypeError, match="returned int"):
        create_generator("python", factory="user_model_mod:bad_factory")
    with pytest.raises(ValueError, match="exactly one of"):
        create_generator("python")


def test_generator_errors_become_results(tmp_path):
    class Flaky(Generator):
        def generate_one(self, request):
            raise RuntimeError("out of memory")

    [res] = Flaky().generate([_req(tmp_path)])
    assert not res.ok and res.error == "RuntimeError: out of memory" and "traceback" in res.metadata
    with pytest.raises(ValueError, match="exactly one"):
        GenerationResult("p")
