"""Builders for test assets, written independently of mme3dr (plain trimesh, hand-written OBJ/MTL/PLY)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image


def box(extents=(1.0, 2.0, 3.0)) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents)


def vertex_coloured_glb(path: Path) -> Path:
    m = box()
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile([255, 0, 0, 255], (len(m.vertices), 1)))
    m.export(path)
    return path


def checker_image(size: int = 16) -> Image.Image:
    a = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([a, 255 - a, np.full_like(a, 128)], axis=-1))


def textured_glb(path: Path) -> Path:
    m = box()
    uv = np.random.default_rng(0).random((len(m.vertices), 2))
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=checker_image())
    m.export(path)
    return path


def obj_with_mtl(folder: Path, name: str = "thing") -> Path:
    """A quad (two triangles) with a texture, written by hand as OBJ + MTL + PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    checker_image().save(folder / "tex.png")
    (folder / f"{name}.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd tex.png\n")
    (folder / f"{name}.obj").write_text(
        f"mtllib {name}.mtl\n"
        "v 0 0 0\nv 2 0 0\nv 2 0 1\nv 0 0 1\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl skin\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")
    return folder / f"{name}.obj"


def ascii_ply(path: Path, vertices, faces=(), colours=None) -> Path:
    """Hand-written ASCII PLY; ``faces`` may index anything (for invalid-face tests)."""
    lines = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}",
             "property float x", "property float y", "property float z"]
    if colours is not None:
        lines += ["property uchar red", "property uchar green", "property uchar blue"]
    if len(faces):
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    for i, v in enumerate(vertices):
        row = " ".join(str(float(x)) for x in v)
        if colours is not None:
            row += " " + " ".join(str(int(c)) for c in colours[i])
        lines.append(row)
    lines += [f"{len(f)} " + " ".join(str(int(i)) for i in f) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


TETRA_V = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TETRA_F = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def scene_glb(path: Path) -> Path:
    """Two unit cubes placed by node transforms at x = -2 and x = +2 (only the scene graph moves them)."""
    scene = trimesh.Scene()
    for x in (-2.0, 2.0):
        scene.add_geometry(trimesh.creation.box(extents=(1, 1, 1)), transform=trimesh.transformations.translation_matrix([x, 0, 0]))
    scene.export(path)
    return path


def y_up_cone(path: Path) -> Path:
    """A cone whose apex points along +y (a y-up asset: its 'up' is +y)."""
    cone = trimesh.creation.cone(radius=0.25, height=2.0)  # apex along +z
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # +z -> +y
    cone.export(path)
    return path
