"""A corpus of malformed and hostile assets and prompt ids, built into a temporary folder at test time.

:func:`build` writes one asset per case into a folder-adapter root (``ROOT/<id>.<ext>`` or ``ROOT/<id>/...``) and
the sentinel files the hostile ones point at into ``OUTSIDE`` (a folder beside the root that no stage may read).
Each :class:`Case` names the reason code ``mme3dr validate`` must record for it (``None``: the asset is valid).
Big files are sparse or made here, never committed; the whole corpus takes well under a second to build.
Everything is written by hand (struct, json, zlib), independently of mme3dr.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

#: Sentinel files outside the corpus root that hostile assets name; none may be opened.
SENTINELS = ("secret.mtl", "secret.bin", "secret.png", "secret.glb")


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, Path, str], None]  # (root, outside, id)
    reason: str | None  # reason code recorded by validate; None = a valid asset
    what: str = ""


# --------------------------------------------------------------------------------------------------- file writers


def glb_bytes(doc: dict, binary: bytes = b"", version: int = 2, length: int | None = None,
              json_len: int | None = None) -> bytes:
    j = json.dumps(doc).encode()
    j += b" " * (-len(j) % 4)
    binary += b"\0" * (-len(binary) % 4)
    body = struct.pack("<II", len(j) if json_len is None else json_len, 0x4E4F534A) + j
    if binary:
        body += struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, version, 12 + len(body) if length is None else length) + body


TRI_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
TRI_I = np.array([0, 1, 2], np.uint32)


def triangle_doc(v_count: int = 3, i_count: int = 3, v_view: bool = True, buffer: dict | None = None,
                 **extra) -> dict:
    """A one-triangle glTF document: POSITION (view 0) and indices (view 1) in buffer 0."""
    vb, ib = TRI_V.nbytes, TRI_I.nbytes
    pos = {"componentType": 5126, "type": "VEC3", "count": v_count, "max": [1, 1, 0], "min": [0, 0, 0]}
    if v_view:
        pos["bufferView"] = 0
    doc = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
           "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
           "buffers": [buffer or {"byteLength": vb + ib}],
           "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": vb},
                           {"buffer": 0, "byteOffset": vb, "byteLength": ib}],
           "accessors": [pos, {"bufferView": 1, "componentType": 5125, "type": "SCALAR", "count": i_count}]}
    doc.update(extra)
    return doc


def tri_bin(v: np.ndarray = TRI_V, i: np.ndarray = TRI_I) -> bytes:
    return v.astype(np.float32).tobytes() + i.astype(np.uint32).tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, followed by a token IDAT (a decompression bomb's
    claim, without its payload)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def small_png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def obj_text(mtllib: str | None = None, usemtl: bool = True) -> str:
    head = f"mtllib {mtllib}\n" if mtllib else ""
    return (head + "v 0 0 0\nv 1 0 0\nv 1 0 1\nv 0 0 1\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
            + ("usemtl skin\n" if usemtl and mtllib else "") + "f 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")


def obj_with_texture(folder: Path, texture: str) -> None:
    write(folder / "model.obj", obj_text("model.mtl"))
    write(folder / "model.mtl", f"newmtl skin\nKd 1 1 1\nmap_Kd {texture}\n")


def ascii_ply_header(vertices: int, faces: int, fmt: str = "ascii") -> str:
    return (f"ply\nformat {fmt} 1.0\nelement vertex {vertices}\nproperty float x\nproperty float y\n"
            f"property float z\nelement face {faces}\nproperty list uchar int vertex_indices\nend_header\n")


# --------------------------------------------------------------------------------------------------------- cases


def _good_glb(root, outside, i):
    trimesh.creation.box(extents=(1, 2, 3)).export(root / f"{i}.glb")


def _good_obj(root, outside, i):
    write(root / i / "tex.png", small_png())
    obj_with_texture(root / i, "tex.png")


def _good_ply(root, outside, i):
    write(root / f"{i}.ply", ascii_ply_header(4, 4) + "0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n")


def _bytes(name: str, data: bytes | str) -> Callable:
    def build(root, outside, i):
        write(root / f"{i}{name}", data)
    return build


def _glb(doc_fn: Callable[[], dict], binary: bytes = b"", **kw) -> Callable:
    def build(root, outside, i):
        write(root / f"{i}.glb", glb_bytes(doc_fn(), binary, **kw))
    return build


def _truncated_glb(root, outside, i):
    full = glb_bytes(triangle_doc(), tri_bin())
    write(root / f"{i}.glb", full[: len(full) // 2])


def _gltf(doc_fn: Callable[[Path, Path], dict], extra: Callable[[Path, Path], None] | None = None) -> Callable:
    def build(root, outside, i):
        folder = root / i
        folder.mkdir(parents=True, exist_ok=True)
        if extra:
            extra(folder, outside)
        write(folder / "model.gltf", json.dumps(doc_fn(folder, outside)))
    return build


def _b64(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _fifo(name: str) -> Callable[[Path, Path], None]:
    def make(folder, outside):
        os.mkfifo(folder / name)
    return make


def _obj_mtllib(target: str, extra: Callable[[Path, Path], None] | None = None) -> Callable:
    def build(root, outside, i):
        folder = root / i
        folder.mkdir(parents=True, exist_ok=True)
        if extra:
            extra(folder, outside)
        write(folder / "model.obj", obj_text(target))
    return build


def _obj_texture(texture: str, extra: Callable[[Path, Path], None] | None = None) -> Callable:
    def build(root, outside, i):
        folder = root / i
        folder.mkdir(parents=True, exist_ok=True)
        if extra:
            extra(folder, outside)
        obj_with_texture(folder, texture)
    return build


def _zero_area_many(root, outside, i):
    n = 200_000
    text = ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nv 2 0 0\n" + "f 1 2 5\n" * n
            + "f 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    write(root / f"{i}.obj", text)


def _sparse_huge(root, outside, i):
    with open(root / f"{i}.glb", "wb") as f:
        f.truncate(2 * 2**30)  # 2 GiB of holes: no disk used, nothing read


def _asset_fifo(root, outside, i):
    (root / i).mkdir()
    os.mkfifo(root / i / "model.glb")


def _asset_symlink_out(root, outside, i):
    os.symlink(outside / "secret.glb", root / f"{i}.glb")


def _asset_dir(root, outside, i):
    (root / f"{i}.glb").mkdir()


def _symlink(name: str, target: Callable[[Path, Path], str | Path]) -> Callable[[Path, Path], None]:
    def make(folder, outside):
        os.symlink(target(folder, outside), folder / name)
    return make


def _loop(folder, outside):
    os.symlink("b.png", folder / "a.png")
    os.symlink("a.png", folder / "b.png")


_BIN = tri_bin()
_RNG = np.random.default_rng(13)
GARBAGE = _RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()

CASES: tuple[Case, ...] = (
    # controls: valid assets beside the hostile ones must come through every stage untouched
    Case("ok-glb", _good_glb, None, "a plain box"),
    Case("ok-obj", _good_obj, None, "a textured OBJ + MTL + PNG"),
    Case("ok-ply", _good_ply, None, "an ASCII PLY tetrahedron"),
    Case("zero-area-many", _zero_area_many, None, "200,000 zero-area faces around a tetrahedron: dropped, counted"),
    # empty files and garbage with the right extension
    Case("empty-glb", _bytes(".glb", b""), "unreadable", "0 bytes"),
    Case("empty-obj", _bytes(".obj", b""), "empty", "0 bytes"),
    Case("empty-ply", _bytes(".ply", b""), "unreadable", "0 bytes"),
    Case("garbage-glb", _bytes(".glb", GARBAGE), "unreadable", "random bytes"),
    Case("garbage-ply", _bytes(".ply", GARBAGE), "unreadable", "random bytes"),
    Case("garbage-stl", _bytes(".stl", GARBAGE), "too_many_faces", "random bytes: the count field reads ~10^9"),
    Case("garbage-off", _bytes(".off", GARBAGE), "unreadable", "random bytes"),
    # broken containers and lying headers
    Case("glb-truncated", _truncated_glb, "unreadable", "a GLB cut in half"),
    Case("glb-version-1", _glb(triangle_doc, _BIN, version=1), "unreadable", "glTF 1 header"),
    Case("glb-length-lie", _glb(triangle_doc, _BIN, length=10**9), "unreadable", "header claims 1 GB"),
    Case("glb-chunk-lie", _glb(triangle_doc, _BIN, json_len=2**31), "unreadable", "JSON chunk past the end"),
    Case("glb-accessor-bomb", _glb(lambda: triangle_doc(v_count=10**9, v_view=False), _BIN), "too_large",
         "an accessor of 10^9 VEC3 without a bufferView (11 GiB of zeros)"),
    Case("glb-accessor-overrun", _glb(lambda: triangle_doc(v_count=10**6), _BIN), "unreadable",
         "10^6 elements in a 36-byte view"),
    Case("glb-buffer-lie", _glb(lambda: triangle_doc(buffer={"byteLength": 10**12}), _BIN), "unreadable",
         "a buffer claiming 1 TB"),
    Case("glb-draco", _glb(lambda: triangle_doc(extensionsUsed=["KHR_draco_mesh_compression"],
                                                extensionsRequired=["KHR_draco_mesh_compression"]), _BIN),
         "unsupported_compression", "Draco without DracoPy"),
    Case("glb-meshopt", _glb(lambda: triangle_doc(extensionsUsed=["EXT_meshopt_compression"],
                                                  extensionsRequired=["EXT_meshopt_compression"]), _BIN),
         "unsupported_compression", "meshopt"),
    Case("glb-huge-index", _glb(triangle_doc, tri_bin(i=np.array([0, 1, 4_000_000_000], np.uint32))),
         "invalid_faces", "an index of 4e9"),
    Case("glb-nan", _glb(triangle_doc, tri_bin(v=np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], np.float32))),
         "non_finite", "a NaN vertex"),
    Case("glb-node-cycle", _glb(lambda: triangle_doc(nodes=[{"mesh": 0, "children": [1]}, {"children": [0]}]),
                                _BIN), None, "nodes that are their own ancestors (trimesh keeps one path)"),
    Case("glb-image-bomb", _glb(lambda: triangle_doc(
        images=[{"bufferView": 2, "mimeType": "image/png"}],
        bufferViews=[{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 12},
                     {"buffer": 0, "byteOffset": 48, "byteLength": len(png_header(100_000, 100_000))}],
        buffers=[{"byteLength": 48 + len(png_header(100_000, 100_000))}]),
        _BIN + png_header(100_000, 100_000)), "too_large", "an embedded PNG declaring 10^10 pixels"),
    Case("glb-sparse-2gib", _sparse_huge, "too_large", "a 2 GiB (sparse) file"),
    # path tricks in companion files
    Case("gltf-uri-dotdot", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 48, "uri": "../../outside/secret.bin"})),
         "outside_folder", "buffer ../../outside/secret.bin"),
    Case("gltf-uri-absolute", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 48, "uri": "/etc/passwd"})),
         "outside_folder", "buffer /etc/passwd"),
    Case("gltf-uri-fifo", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 48, "uri": "fifo.bin"}), _fifo("fifo.bin")),
         "not_a_file", "buffer file is a FIFO"),
    Case("gltf-uri-self", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 10**6, "uri": "model.gltf"})),
         "unreadable", "the buffer is the glTF file itself"),
    Case("gltf-uri-symlink-out", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 48, "uri": "data.bin"}),
                                       _symlink("data.bin", lambda f, o: o / "secret.bin")),
         "outside_folder", "buffer is a symlink to a file outside"),
    Case("gltf-data-uri-lie", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 10**10, "uri": _b64(_BIN)})),
         "unreadable", "a data: URI claiming 10 GB"),
    Case("gltf-data-uri-garbage", _gltf(lambda f, o: triangle_doc(buffer={"byteLength": 48, "uri": "data:application/octet-stream;base64,@@@!!"})),
         "unreadable", "a data: URI that is not base64"),
    Case("gltf-data-uri-image-bomb", _gltf(lambda f, o: triangle_doc(
        buffer={"byteLength": 48, "uri": _b64(_BIN)}, images=[{"uri": _b64(png_header(100_000, 100_000), "image/png")}])),
         "too_large", "a data: URI PNG declaring 10^10 pixels"),
    Case("gltf-image-outside", _gltf(lambda f, o: triangle_doc(
        buffer={"byteLength": 48, "uri": _b64(_BIN)}, images=[{"uri": "../../outside/secret.png"}],
        textures=[{"source": 0}], materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
        meshes=[{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}])),
         "outside_folder", "a texture outside the folder"),
    Case("obj-mtllib-fifo", _obj_mtllib("fifo.mtl", _fifo("fifo.mtl")), "not_a_file", "mtllib is a FIFO (hung validate)"),
    Case("obj-mtllib-passwd", _obj_mtllib("/etc/passwd"), "outside_folder", "mtllib /etc/passwd"),
    Case("obj-mtllib-dotdot", _obj_mtllib("../../outside/secret.mtl"), "outside_folder", "mtllib ../../outside"),
    Case("obj-mtllib-dev-zero", _obj_mtllib("zero.mtl", _symlink("zero.mtl", lambda f, o: "/dev/zero")),
         "outside_folder", "mtllib is a symlink to /dev/zero"),
    Case("obj-texture-outside", _obj_texture("../../outside/secret.png"), "outside_folder", "map_Kd outside"),
    Case("obj-texture-symlink-out", _obj_texture("link.png", _symlink("link.png", lambda f, o: o / "secret.png")),
         "outside_folder", "map_Kd is a symlink to a file outside"),
    Case("obj-texture-symlink-loop", _obj_texture("a.png", _loop), "not_a_file", "map_Kd is a symlink loop"),
    Case("obj-texture-bomb", _obj_texture("bomb.png", lambda f, o: write(f / "bomb.png", png_header(100_000, 100_000))),
         "too_large", "a PNG declaring 10^10 pixels"),
    Case("obj-degenerate", _bytes(".obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\nf 1 1 1\n"),
         "degenerate", "every face has three collinear corners"),
    Case("obj-huge-index", _bytes(".obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4000000000\n"), "unreadable",
         "an index of 4e9"),
    Case("obj-nan", _bytes(".obj", "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n"), "non_finite", "a NaN vertex"),
    Case("obj-points-only", _bytes(".obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"), "no_faces", "vertices, no faces"),
    Case("obj-absurd-size", _bytes(".obj", "v 0 0 0\nv 1e9 0 0\nv 0 1 0\nf 1 2 3\n"), "absurd_size", "1e9 units"),
    Case("ply-binary-count-lie", _bytes(".ply", ascii_ply_header(10**9, 1, "binary_little_endian") + "\0" * 64),
         "unreadable", "binary PLY claiming 10^9 vertices"),
    Case("ply-face-bomb", _bytes(".ply", ascii_ply_header(3, 10**9) + "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"),
         "too_many_faces", "PLY claiming 10^9 faces"),
    Case("ply-bad-count", _bytes(".ply", ascii_ply_header(3, 1).replace("vertex 3", "vertex -5") + "0 0 0\n"),
         "unreadable", "a negative count"),
    Case("stl-count-lie", _bytes(".stl", b"\0" * 80 + struct.pack("<I", 1_000_000) + b"\0" * 100), "unreadable",
         "binary STL claiming 10^6 triangles in 184 bytes"),
    Case("off-count-lie", _bytes(".off", "OFF\n1000000000 1 0\n0 0 0\n"), "unreadable", "OFF claiming 10^9 vertices"),
    # the asset file itself: not a regular file, or outside the folder (refused by the folder adapter)
    Case("asset-fifo", _asset_fifo, "generation_failed", "the asset is a FIFO"),
    Case("asset-symlink-out", _asset_symlink_out, "generation_failed", "the asset is a symlink to a file outside"),
    Case("asset-folder", _asset_dir, "generation_failed", "a folder named like an asset"),
)

#: Prompt ids that must be refused when the prompt file is loaded (they would name paths outside the run).
HOSTILE_IDS: tuple[str, ...] = ("../../victim", "../victim", "a/../../victim", "..", ".", "a/b", "x\\..\\y",
                                "victim\x00", "~/victim")


def make_outside(outside: Path) -> None:
    """The sentinel files hostile assets point at (a valid MTL, buffer, PNG and GLB: reading them would work)."""
    outside.mkdir(parents=True, exist_ok=True)
    write(outside / "secret.mtl", "newmtl skin\nKd 1 0 0\n")
    write(outside / "secret.bin", _BIN)
    write(outside / "secret.png", small_png())
    trimesh.creation.box().export(outside / "secret.glb")


def build(root: Path, outside: Path) -> list[Case]:
    """Write every case into ``root`` and the sentinels into ``outside``; returns the cases."""
    make_outside(outside)
    root.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        case.build(root, outside, case.id)
    return list(CASES)


def prompt_rows(ids) -> list[dict]:
    return [{"id": i, "category": "spatial", "prompt": f"hostile case {i}", "object_class": "thing",
             "source": "test", "checklist": []} for i in ids]


def write_prompts(path: Path, ids) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(ids)))
    return path
