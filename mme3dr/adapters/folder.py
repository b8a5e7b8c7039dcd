"""``folder``: assets you already generated, named by prompt id."""

from __future__ import annotations

import os
from pathlib import Path

from mme3dr.adapters.base import GenerationRequest, Generator
from mme3dr.assets import ASSET_SUFFIXES, parse_up_axis
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import MissingInputError
from mme3dr.paths import child_path


class FolderGenerator(Generator):
    """Pre-generated assets: ROOT/<prompt_id>.<ext> or ROOT/<prompt_id>/<one file>.<ext>.

    Extensions: .glb .gltf .obj .ply .off .stl. Files are used in place (an OBJ keeps its MTL and textures
    beside it). Pass ``up_axis=y`` for y-up assets such as TRELLIS GLBs. Nothing outside ROOT is read: a
    candidate that is (or lies under) a symbolic link leading out of ROOT fails its prompt with an error saying so.
    """

    def __init__(self, root: str, up_axis: str = DEFAULTS.up_axis) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise MissingInputError(f"folder model: root {self.root} is not a directory "
                                    "(pass --model-arg root=PATH to the folder of generated assets)")
        self.up_axis = parse_up_axis(up_axis)

    def _inside(self, *names: str) -> Path:
        return child_path(self.root, *names, what=f"folder model: {self.root} entry")

    def find(self, prompt_id: str) -> list[Path]:
        """Every candidate asset for ``prompt_id`` under the root, symbolic links resolved.

        Raises :class:`~mme3dr.paths.UnsafePathError` when ``prompt_id`` is not a plain name or a candidate leads
        out of the root."""
        names = [f"{prompt_id}{ext}" for ext in ASSET_SUFFIXES]
        flat = [self._inside(n) for n in names if os.path.lexists(self.root / n)]
        sub = self._inside(prompt_id)
        nested = [self._inside(prompt_id, p.name) for p in sorted(sub.iterdir())
                  if p.suffix.lower() in ASSET_SUFFIXES] if sub.is_dir() else []
        return [p.resolve() for p in flat + nested if p.is_file()]

    def generate_one(self, request: GenerationRequest) -> Path:
        found = self.find(request.prompt_id)
        if not found:
            raise FileNotFoundError(f"no asset for {request.prompt_id} in {self.root}: expected "
                                    f"{request.prompt_id}.glb (or {', '.join(ASSET_SUFFIXES[1:])}) or a folder "
                                    f"{request.prompt_id}/ holding one such file")
        if len(found) > 1:
            raise ValueError(f"several assets for {request.prompt_id} in {self.root}: "
                             f"{', '.join(str(p.relative_to(self.root)) for p in found)}; keep exactly one")
        return found[0]
