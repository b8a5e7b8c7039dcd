"""``command``: any command-line program, one run per prompt, without a shell."""

from __future__ import annotations

import shlex
import shutil
import string
import subprocess
import tempfile
import time
from pathlib import Path

from mme3dr.adapters.base import GenerationRequest, GenerationResult, Generator
from mme3dr.assets import ASSET_SUFFIXES, parse_up_axis
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError, MissingInputError, naming, stops_every_write
from mme3dr.processes import child_process, kill_group

PLACEHOLDERS = {
    "prompt": "the prompt text (one argv element, spaces kept)",
    "prompt_file": "a UTF-8 file holding the prompt text",
    "prompt_id": "the prompt id, e.g. spatial-001",
    "category": "the category key",
    "seed": "the integer seed",
    "output": "the file the program must write: <output_dir>/<prompt_id>.<ext>",
    "output_dir": "a fresh folder for this prompt; without {output} the program writes one asset file there",
}
LOG_NAME = "command.log"


class CommandGenerator(Generator):
    """A command-line program: ``cmd`` is an argv template with placeholders such as {prompt} and {output}.

    The template is split like a shell would (``shlex``) but run without a shell; each prompt gets a fresh
    folder, a timeout (``timeout`` seconds, then the whole process group is killed) and a ``command.log``
    with the argv, stdout, stderr and exit status. The program never outlives the prompt: what is left of its
    process group when it exits is killed, and if mme3dr itself dies the program goes with it
    (:func:`mme3dr.processes.child_process`).
    """

    def __init__(self, cmd: str, timeout: float = DEFAULTS.command_timeout_s,
                 ext: str = DEFAULTS.command_output_ext, up_axis: str = DEFAULTS.up_axis,
                 cwd: str | None = None) -> None:
        self.template = shlex.split(cmd)
        if not self.template:
            raise InputError("command model: --model-arg cmd='PROGRAM ARGS...' is empty")
        used = {f for arg in self.template for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
        unknown = used - set(PLACEHOLDERS)
        if unknown:
            raise InputError(f"command model: unknown placeholder(s) {sorted(unknown)} in cmd; known: "
                             + "; ".join(f"{{{k}}} = {v}" for k, v in PLACEHOLDERS.items())
                             + " (write {{ and }} for literal braces)")
        if not used & {"output", "output_dir"}:
            raise InputError("command model: cmd must contain {output} (the file to write) or {output_dir}")
        if shutil.which(self.template[0], path=None) is None and not Path(self.template[0]).is_file():
            raise MissingInputError(f"command model: program {self.template[0]!r} not found on PATH")
        self.ext = ext.lstrip(".").lower()
        if f".{self.ext}" not in ASSET_SUFFIXES:
            raise InputError(f"command model: ext {ext!r} is not one of {', '.join(ASSET_SUFFIXES)}")
        if timeout <= 0:
            raise InputError(f"command model: timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self.up_axis = parse_up_axis(up_axis)
        self.cwd = cwd
        self.writes_output = "output" in used

    def argv(self, request: GenerationRequest) -> list[str]:
        """The argv for one request (``prompt.txt`` is written first when {prompt_file} is used)."""
        out_dir = request.output_dir.resolve()
        values = {"prompt": request.prompt, "prompt_file": str(out_dir / "prompt.txt"),
                  "prompt_id": request.prompt_id, "category": request.category, "seed": str(request.seed),
                  "output": str(out_dir / f"{request.prompt_id}.{self.ext}"), "output_dir": str(out_dir)}
        return [arg.format_map(values) for arg in self.template]

    def generate_one(self, request: GenerationRequest) -> GenerationResult:
        out_dir = request.output_dir.resolve()
        with naming(out_dir / "prompt.txt"):
            (out_dir / "prompt.txt").write_text(request.prompt, encoding="utf-8")
        argv = self.argv(request)
        log_path = out_dir / LOG_NAME
        meta = {"argv": argv, "log": str(log_path)}
        start = time.perf_counter()
        timed_out = False
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                with child_process(argv, cwd=self.cwd, stdout=out, stderr=err) as proc:
                    try:
                        returncode = proc.wait(timeout=self.timeout)
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        kill_group(proc.pid)
                        returncode = proc.wait()
            except OSError as exc:
                if stops_every_write(exc):  # e.g. the run's disk is full: every prompt would fail alike
                    raise
                return GenerationResult.failure(request, f"cannot start {argv[0]!r}: {exc}", **meta)
            seconds = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            _write_log(log_path, argv, out.read(), err.read(), returncode, seconds, timed_out, self.timeout)
        meta["returncode"] = returncode
        if timed_out:
            return GenerationResult.failure(request, f"timed out after {self.timeout:g} s (process group killed); "
                                            f"see {log_path}", seconds, **meta)
        if returncode != 0:
            return GenerationResult.failure(request, f"command exited with status {returncode}; see {log_path}",
                                            seconds, **meta)
        asset = self._find_output(request, out_dir)
        if isinstance(asset, str):
            return GenerationResult.failure(request, asset, seconds, **meta)
        return GenerationResult(request.prompt_id, asset_path=asset, up_axis=self.up_axis, seconds=seconds,
                                metadata=meta)

    def _find_output(self, request: GenerationRequest, out_dir: Path) -> Path | str:
        """The written asset, or an error message."""
        if self.writes_output:
            path = out_dir / f"{request.prompt_id}.{self.ext}"
            if not path.is_file() or path.stat().st_size == 0:
                return f"command exited 0 but wrote no file at {path}"
            return path
        found = sorted(p for p in out_dir.iterdir() if p.suffix.lower() in ASSET_SUFFIXES)
        if len(found) != 1:
            return (f"command exited 0 and left {len(found)} asset files in {out_dir} "
                    f"({', '.join(p.name for p in found) or 'none'}); expected exactly one")
        return found[0]


def _write_log(path: Path, argv: list[str], stdout: bytes, stderr: bytes, returncode: int, seconds: float,
               timed_out: bool, timeout: float) -> None:
    status = f"killed after timeout of {timeout:g} s" if timed_out else f"exit status {returncode}"
    text = (f"$ {shlex.join(argv)}\n# {status}, {seconds:.2f} s\n"
            f"----- stdout -----\n{stdout.decode('utf-8', 'replace')}\n"
            f"----- stderr -----\n{stderr.decode('utf-8', 'replace')}\n")
    with naming(path):
        path.write_text(text, encoding="utf-8")
