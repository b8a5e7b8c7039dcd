"""``folder``: assets you already generated, named by prompt id."""

from __future__ import annotations

from pathlib import Path

from mme3dr.adapters.base import GenerationRequest, Generator, parse_up_axis
from mme3dr.assets import ASSET_SUFFIXES
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import MissingInputError


class FolderGenerator(Generator):
    """Pre-generated assets: ROOT/<prompt_id>.<ext> or ROOT/<prompt_id>/<one file>.<ext>.

    Extensions: .glb .gltf .obj .ply .off .stl. Files are used in place (an OBJ keeps its MTL and textures
    beside it). An asset that is a symlink leading out of the root is refused (nothing outside the root is read).
    Pass ``up_axis=y`` for y-up assets such as TRELLIS GLBs.
    """

    def __init__(self, root: str, up_axis: str = DEFAULTS.up_axis) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise MissingInputError(f"folder model: root {self.root} is not a directory "
                                    "(pass --model-arg root=PATH to the folder of generated assets)")
        self.up_axis = parse_up_axis(up_axis)

    def find(self, prompt_id: str) -> list[Path]:
        """Every candidate asset for ``prompt_id`` under the root."""
        flat = [self.root / f"{prompt_id}{ext}" for ext in ASSET_SUFFIXES]
        sub = self.root / prompt_id
        nested = sorted(p for p in sub.iterdir() if p.suffix.lower() in ASSET_SUFFIXES) if sub.is_dir() else []
        return [p for p in flat if p.is_file()] + nested

    def generate_one(self, request: GenerationRequest) -> Path:
        found = self.find(request.prompt_id)
        if not found:
            raise FileNotFoundError(f"no asset for {request.prompt_id} in {self.root}: expected "
                                    f"{request.prompt_id}.glb (or {', '.join(ASSET_SUFFIXES[1:])}) or a folder "
                                    f"{request.prompt_id}/ holding one such file")
        if len(found) > 1:
            raise ValueError(f"several assets for {request.prompt_id} in {self.root}: "
                             f"{', '.join(str(p.relative_to(self.root)) for p in found)}; keep exactly one")
        target = found[0].resolve()
        if not target.is_relative_to(self.root):
            raise ValueError(f"the asset for {request.prompt_id}, {found[0]}, is a link to {target}, outside the "
                             f"folder {self.root}; copy the file into the folder")
        return found[0]
