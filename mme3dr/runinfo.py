"""``RUN/run.json``: what produced a run (versions, commit, model, seeds, presets, metric configs, hardware, timings)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mme3dr import runfiles
from mme3dr.jsonl import atomic_write_text, read_json

PACKAGES = ("mme3dr", "torch", "torchvision", "trimesh", "pyrender-maintained", "PyOpenGL", "open_clip_torch",
            "torch-fidelity", "transformers", "numpy", "pandas", "datasets", "matplotlib")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    """``git -C checkout ARGS`` that never writes to the repository: ``GIT_OPTIONAL_LOCKS=0`` stops ``status``
    from refreshing the index (and taking ``.git/index.lock``), and the child gets no terminal prompt."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=5, env=env,
                          stdin=subprocess.DEVNULL)


def git_commit(checkout: Path | str | None = None) -> str | None:
    """The commit of the toolkit's source checkout, ``+dirty`` when tracked files differ from it; None for an
    installed package (the package folder is not the top of a git work tree: a wheel installed inside some other
    repository, e.g. a virtual environment in the user's project, is not mistaken for it) or without git.

    Read-only: it never writes to the checkout (see :func:`_git`), so evaluating leaves the toolkit's repository as
    it was. ``checkout`` defaults to the folder above the ``mme3dr`` package."""
    root = Path(checkout) if checkout is not None else Path(__file__).resolve().parent.parent
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": sys.version.split()[0]}
    try:
        import torch

        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch missing or CUDA misconfigured: report what we know
        info["cuda"] = []
    return info


def read_run_info(run_dir: Path | str) -> dict[str, Any]:
    """``RUN/run.json`` ({} when there is none); a damaged file is an error naming it."""
    path = Path(run_dir) / runfiles.RUN_INFO
    if not path.exists():
        return {}
    return read_json(path, "delete it: the next `mme3dr evaluate` on this run writes a new one (the prompts, model, "
                           "preset and metrics it records are those of that command)")


def update_run_info(run_dir: Path | str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``RUN/run.json`` (nested dicts are merged one level deep) and return it."""
    path = Path(run_dir) / runfiles.RUN_INFO
    info = read_run_info(run_dir)
    if not info:
        from mme3dr import __version__

        info = {"toolkit_version": __version__, "git_commit": git_commit(), "packages": package_versions(),
                "hardware": hardware(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(info.get(key), dict):
            info[key] = {**info[key], **value}
        else:
            info[key] = value
    info["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(path, json.dumps(info, indent=1, default=str))
    return info
