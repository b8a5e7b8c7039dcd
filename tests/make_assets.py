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


def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=2)


def solid_image(rgb, size: int = 4) -> Image.Image:
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


def _obj_text(m: trimesh.Trimesh, mtl: str, with_uv: bool) -> str:
    lines = [f"mtllib {mtl}"] + [f"v {float(x)!r} {float(y)!r} {float(z)!r}" for x, y, z in m.vertices]
    if with_uv:
        lines.append("vt 0.5 0.5")
    lines.append("usemtl paint")
    lines += [("f " + " ".join(f"{i + 1}/1" for i in f)) if with_uv else ("f " + " ".join(str(i + 1) for i in f))
              for f in m.faces]
    return "\n".join(lines) + "\n"


def one_colour_sphere(folder: Path, rgb) -> dict[str, Path]:
    """The same sphere painted one sRGB colour ``rgb`` (0-255), stored seven ways, written without mme3dr.

    glb_texture: a glTF PBR material whose base-colour texture is the colour (factor 1); glb_vertex: glTF COLOR_0;
    ply_vertex / ply_face: hand-written ASCII PLY with vertex / face colour properties; obj_kd: OBJ + MTL with
    ``Kd`` = rgb / 255; obj_texture: OBJ + MTL with ``map_Kd`` the colour and ``Kd 0.8`` (what Blender writes).
    ply_uv_no_image: a PLY with UVs but no texture image (no colour at all: it must render as untextured).
    """
    folder.mkdir(parents=True, exist_ok=True)
    m, rgb = sphere(), [int(c) for c in rgb]
    out = {}
    t = m.copy()
    pbr = trimesh.visual.material.PBRMaterial(baseColorTexture=solid_image(rgb), baseColorFactor=[255, 255, 255, 255],
                                              metallicFactor=0.0, roughnessFactor=1.0)
    t.visual = trimesh.visual.TextureVisuals(uv=np.full((len(m.vertices), 2), 0.5), material=pbr)
    out["glb_texture"] = folder / "texture.glb"
    t.export(out["glb_texture"])
    v = m.copy()
    v.visual = trimesh.visual.ColorVisuals(v, vertex_colors=np.tile(rgb + [255], (len(m.vertices), 1)))
    out["glb_vertex"] = folder / "vertex.glb"
    v.export(out["glb_vertex"])
    out["ply_vertex"] = ascii_ply(folder / "vertex.ply", m.vertices, m.faces, colours=[rgb] * len(m.vertices))
    head = ["ply", "format ascii 1.0", f"element vertex {len(m.vertices)}", "property float x", "property float y",
            "property float z", f"element face {len(m.faces)}", "property list uchar int vertex_indices",
            "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    body = [" ".join(repr(float(x)) for x in p) for p in m.vertices]
    body += [f"3 {a} {b} {c} {rgb[0]} {rgb[1]} {rgb[2]}" for a, b, c in m.faces]
    out["ply_face"] = folder / "face.ply"
    out["ply_face"].write_text("\n".join(head + body) + "\n")
    (folder / "kd.mtl").write_text("newmtl paint\nKd {:.6f} {:.6f} {:.6f}\n".format(*(c / 255 for c in rgb)))
    out["obj_kd"] = folder / "kd.obj"
    out["obj_kd"].write_text(_obj_text(m, "kd.mtl", with_uv=False))
    solid_image(rgb).save(folder / "paint.png")
    (folder / "tex.mtl").write_text("newmtl paint\nKd 0.8 0.8 0.8\nmap_Kd paint.png\n")
    out["obj_texture"] = folder / "tex.obj"
    out["obj_texture"].write_text(_obj_text(m, "tex.mtl", with_uv=True))
    head = ["ply", "format ascii 1.0", f"element vertex {len(m.vertices)}", "property float x", "property float y",
            "property float z", "property float s", "property float t", f"element face {len(m.faces)}",
            "property list uchar int vertex_indices", "end_header"]
    body = [" ".join(repr(float(x)) for x in p) + " 0.5 0.5" for p in m.vertices]
    body += [f"3 {a} {b} {c}" for a, b, c in m.faces]
    out["ply_uv_no_image"] = folder / "uv_no_image.ply"
    out["ply_uv_no_image"].write_text("\n".join(head + body) + "\n")
    return out
