"""What an asset's files may be, checked before any parser reads them.

An asset is its file plus the companion files it names (an OBJ's ``mtllib`` and textures, a glTF's ``.bin`` buffers
and images). Rules, each with the reason code of :data:`mme3dr.assets.REASONS` it raises:

- every file is a regular file (``not_a_file``: a FIFO, a device, a folder or a symlink loop), at most
  ``max_file_mb`` MiB (``too_large``);
- a companion lies in the asset's folder or below it, after symlinks are followed (``outside_folder``: ``../x``,
  an absolute path, a symlink that leads out). Names are looked up as trimesh does (the name, the name without a
  leading ``/``, the bare file name), so a file sitting beside the asset is found whatever folder the name gives;
- a texture declares at most ``max_texture_pixels`` pixels (``too_large``; its header is read, not its pixels);
- declared sizes are true before anything is allocated from them (``unreadable`` for a lie, ``too_large`` or
  ``too_many_faces`` for a claim past the budget): the GLB header's length and chunk lengths; every glTF buffer's
  ``byteLength`` against the bytes it really holds, every buffer view inside its buffer and every accessor inside
  its view (an accessor with no view is allocated as zeros: its count is bounded instead); PLY and OFF element
  counts against the bytes of the file; a binary STL's triangle count; an OBJ's number of ``f`` lines;
- glTF geometry compression needs a decoder (``unsupported_compression``): Draco (``KHR_draco_mesh_compression``)
  is decoded by trimesh when the ``DracoPy`` package is installed; meshopt (``EXT_meshopt_compression``) has no
  decoder in trimesh.

:class:`GuardedResolver` is the one way companion files are read: trimesh asks it for every name, so the rules
hold for every format trimesh parses. trimesh goes on without a material or texture it cannot get; the resolver
keeps the first rule broken in ``problem`` and the loader raises it after parsing.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import io
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from trimesh.resolvers import FilePathResolver

from mme3dr.assets import AssetError
from mme3dr.defaults import DEFAULTS

MiB = 2**20
#: glTF componentType -> bytes; accessor type -> components.
_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
DRACO = "KHR_draco_mesh_compression"
MESHOPT = ("EXT_meshopt_compression", "KHR_meshopt_compression")
_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942
#: PLY scalar types -> bytes.
_PLY_TYPES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def check_regular_file(path: Path | str, max_file_mb: int = DEFAULTS.max_file_mb, what: str = "the asset") -> int:
    """The size in bytes of ``path``, a regular file of at most ``max_file_mb`` MiB; never opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AssetError("missing", f"{what} does not exist", path) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise AssetError("not_a_file", f"{what} cannot be looked up: {exc}", path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise AssetError("not_a_file", f"{what} is {kind}, not a regular file", path)
    if st.st_size > max_file_mb * MiB:
        raise AssetError("too_large", f"{what} holds {st.st_size / MiB:,.0f} MiB; the limit is {max_file_mb:,} MiB "
                     "(DEFAULTS.max_file_mb)", path)
    return st.st_size


def check_image_header(data: bytes, name: str, max_pixels: int, path: Path | str) -> None:
    """Raise ``too_large`` when ``data`` is an image whose header declares more than ``max_pixels`` pixels."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check would stop at its limit, before the size is known
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
            w, h = im.size
    except Exception:  # not an image (or not one Pillow knows): the parser decides
        return
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if w * h > max_pixels:
        raise AssetError("too_large", f"texture {name!r} declares {w} x {h} pixels; the limit is {max_pixels:,} "
                     "(DEFAULTS.max_texture_pixels)", path)


class GuardedResolver(FilePathResolver):
    """A trimesh resolver that reads companion files only under the rules of the module docstring."""

    def __init__(self, asset: Path | str, max_file_mb: int = DEFAULTS.max_file_mb,
                 max_texture_pixels: int = DEFAULTS.max_texture_pixels) -> None:
        super().__init__(str(asset))
        self.asset = Path(asset)
        self.root = Path(self.parent).resolve()
        self.max_file_mb = max_file_mb
        self.max_texture_pixels = max_texture_pixels
        #: The first rule a companion broke (an AssetError), raised by the loader once trimesh is done.
        self.problem: AssetError | None = None

    def locate(self, name: str) -> Path | None:
        """The regular file ``name`` refers to inside the folder, or None when there is none; raises the
        ``outside_folder``, ``not_a_file`` or ``too_large`` error (and keeps it in ``problem``)."""
        try:
            return self._locate(name)
        except AssetError as exc:
            self.problem = self.problem or exc
            raise

    def _locate(self, name: str) -> Path | None:
        name = name.strip()
        outside = None
        for cand in dict.fromkeys((name, name.lstrip("/"), os.path.split(name)[-1])):
            if not cand:
                continue
            try:
                target = (self.root / cand).resolve()
            except (OSError, RuntimeError) as exc:  # a symlink loop
                raise AssetError("not_a_file", f"companion file {name!r} cannot be looked up: {exc}", self.asset) \
                    from None
            if not target.is_relative_to(self.root):
                outside = outside or target
                continue
            if os.path.lexists(target):
                check_regular_file(target, self.max_file_mb, f"companion file {name!r}")
                return target
        if outside is not None:
            raise AssetError("outside_folder", f"companion file {name!r} is {outside}, outside the asset's folder "
                         f"{self.root}; put the file beside the asset and name it relative to the asset",
                         self.asset)
        return None

    def get(self, name: str) -> bytes:
        path = self.locate(name)
        if path is None:
            raise FileNotFoundError(name)
        data = path.read_bytes()
        try:
            check_image_header(data, name, self.max_texture_pixels, self.asset)
        except AssetError as exc:
            self.problem = self.problem or exc
            raise
        return data

    def namespaced(self, namespace: str) -> GuardedResolver:
        sub = GuardedResolver(self.asset, self.max_file_mb, self.max_texture_pixels)
        sub.parent = os.path.join(self.parent, namespace)
        sub.root = self.root  # the folder rule stays the asset's folder
        return sub


def check_declared_sizes(path: Path, resolver: GuardedResolver, max_faces: int = DEFAULTS.max_faces,
                         memory_mb: int = DEFAULTS.asset_memory_mb) -> None:
    """The per-format checks of declared sizes and compression (module docstring), for the file's extension."""
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        _check_gltf(path, resolver, max_faces, memory_mb)
    elif suffix == ".ply":
        _check_ply(path, max_faces)
    elif suffix == ".off":
        _check_off(path, max_faces)
    elif suffix == ".stl":
        _check_stl(path, max_faces)
    elif suffix == ".obj":
        _check_obj(path, max_faces)


# ------------------------------------------------------------------------------------------------------------ glTF


@dataclass(frozen=True)
class _BinChunk:
    """Where a GLB's binary chunk lies in the file (read in slices: the chunk may be a gigabyte)."""

    path: Path
    offset: int
    length: int

    def read(self, start: int, size: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset + start)
            return f.read(max(0, min(size, self.length - start)))


def _check_gltf(path: Path, resolver: GuardedResolver, max_faces: int, memory_mb: int) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    binary: _BinChunk | None = None
    if path.suffix.lower() == ".glb" or magic == b"glTF":
        doc_bytes, binary = _glb_chunks(path)
    else:
        doc_bytes = path.read_bytes()
    try:
        doc = json.loads(doc_bytes)
    except (ValueError, RecursionError) as exc:
        raise AssetError("unreadable", f"the glTF JSON does not parse: {exc}", path) from None
    if not isinstance(doc, dict):
        raise AssetError("unreadable", "the glTF JSON is not an object", path)
    _check_compression(doc, path)
    _check_gltf_sizes(doc, binary, path, resolver, max_faces, memory_mb)


def _glb_chunks(path: Path) -> tuple[bytes, _BinChunk | None]:
    """(JSON chunk, BIN chunk or None) of a GLB, after checking its header against the file's length."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if size < 20:
            raise AssetError("unreadable", f"{size} bytes: too short for a GLB header", path)
        magic, version, length = struct.unpack("<III", head)
        if magic != _GLB_MAGIC or version != 2:
            raise AssetError("unreadable", f"not a glTF 2.0 binary (magic {head[:4]!r}, version {version})", path)
        if length != size:
            raise AssetError("unreadable", f"the GLB header declares {length:,} bytes but the file holds {size:,}", path)
        doc: bytes | None = None
        binary = None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_len, kind = struct.unpack("<II", f.read(8))
            if offset + 8 + chunk_len > size:
                raise AssetError("unreadable", f"a GLB chunk declares {chunk_len:,} bytes past the end of the file", path)
            if kind == _JSON_CHUNK and doc is None:
                doc = f.read(chunk_len)
            elif kind == _BIN_CHUNK and binary is None:
                binary = _BinChunk(path, offset + 8, chunk_len)
            offset += 8 + chunk_len
    if doc is None:
        raise AssetError("unreadable", "the GLB has no JSON chunk", path)
    return doc, binary


def _check_compression(doc: dict, path: Path) -> None:
    used = set(_list(doc.get("extensionsUsed"))) | set(_list(doc.get("extensionsRequired")))
    if DRACO in used and importlib.util.find_spec("DracoPy") is None:
        raise AssetError("unsupported_compression", "the geometry is Draco-compressed (KHR_draco_mesh_compression) and "
                     "no Draco decoder is installed: `pip install DracoPy` (trimesh decodes Draco with it)", path)
    for ext in MESHOPT:
        if ext in used:
            raise AssetError("unsupported_compression", f"the geometry is meshopt-compressed ({ext}), which trimesh "
                         "cannot decode; export the asset without meshopt compression", path)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _int(value: Any, what: str, path: Path, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AssetError("unreadable", f"{what} is {value!r}, not a non-negative integer", path)
    return value


def _data_uri(uri: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URI (None for other URIs)."""
    if not uri.startswith("data:"):
        return None
    index = uri.find("base64,")
    if index < 0:
        return None
    try:
        return base64.b64decode(uri[index + 7:], validate=True)
    except (binascii.Error, ValueError):
        return b"\x00invalid"  # not base64: its length is checked like any other


def _buffer_bytes(i: int, buf: dict, binary: _BinChunk | None, path: Path, resolver: GuardedResolver) -> int:
    """How many bytes buffer ``i`` really holds."""
    uri = buf.get("uri")
    if uri is None:
        if i != 0 or binary is None:
            raise AssetError("unreadable", f"buffer {i} has no uri and there is no GLB binary chunk for it", path)
        return binary.length
    if not isinstance(uri, str):
        raise AssetError("unreadable", f"buffer {i} uri is {uri!r}", path)
    raw = _data_uri(uri)
    if raw is not None:
        if raw == b"\x00invalid":
            raise AssetError("unreadable", f"buffer {i} is a data: URI that is not valid base64", path)
        return len(raw)
    from urllib.parse import unquote

    located = resolver.locate(unquote(uri))
    if located is None:
        raise AssetError("unreadable", f"buffer {i} names {uri!r}, which is missing beside the asset", path)
    return located.stat().st_size


def _check_gltf_sizes(doc: dict, binary: _BinChunk | None, path: Path, resolver: GuardedResolver, max_faces: int,
                      memory_mb: int) -> None:
    buffers = _list(doc.get("buffers"))
    buffer_len = []
    for i, buf in enumerate(buffers):
        if not isinstance(buf, dict):
            raise AssetError("unreadable", f"buffer {i} is not an object", path)
        declared = _int(buf.get("byteLength"), f"buffer {i} byteLength", path)
        held = _buffer_bytes(i, buf, binary, path, resolver)
        if declared > held:
            raise AssetError("unreadable", f"buffer {i} declares {declared:,} bytes but holds {held:,}", path)
        buffer_len.append(declared)
    views = _list(doc.get("bufferViews"))
    view_len = []
    for i, view in enumerate(views):
        if not isinstance(view, dict):
            raise AssetError("unreadable", f"bufferView {i} is not an object", path)
        b = _int(view.get("buffer"), f"bufferView {i} buffer", path)
        if b >= len(buffer_len):
            raise AssetError("unreadable", f"bufferView {i} names buffer {b}; there are {len(buffer_len)}", path)
        offset = _int(view.get("byteOffset"), f"bufferView {i} byteOffset", path, 0)
        length = _int(view.get("byteLength"), f"bufferView {i} byteLength", path)
        if offset + length > buffer_len[b]:
            raise AssetError("unreadable", f"bufferView {i} spans bytes {offset:,}-{offset + length:,} of buffer {b}, "
                         f"which holds {buffer_len[b]:,}", path)
        view_len.append((length, view.get("byteStride")))
    max_count = 3 * max_faces  # the most vertices (unwelded) or indices a mesh within max_faces can need
    total = 0
    for i, acc in enumerate(_list(doc.get("accessors"))):
        if not isinstance(acc, dict):
            raise AssetError("unreadable", f"accessor {i} is not an object", path)
        count = _int(acc.get("count"), f"accessor {i} count", path)
        size = _COMPONENT_BYTES.get(acc.get("componentType"), 0) * _TYPE_COMPONENTS.get(acc.get("type"), 0)
        if not size:
            raise AssetError("unreadable", f"accessor {i} has componentType {acc.get('componentType')!r} and type "
                         f"{acc.get('type')!r}", path)
        if count * size > memory_mb * MiB:
            raise AssetError("too_large", f"accessor {i} declares {count:,} elements ({count * size / MiB:,.0f} MiB); "
                         f"the loading budget is {memory_mb:,} MiB (DEFAULTS.asset_memory_mb)", path)
        if count > max_count:
            raise AssetError("too_many_faces", f"accessor {i} declares {count:,} elements; a mesh within the face "
                         f"limit ({max_faces:,}) needs at most {max_count:,}", path)
        total += count * size
        if "bufferView" in acc and count:
            v = _int(acc["bufferView"], f"accessor {i} bufferView", path)
            if v >= len(view_len):
                raise AssetError("unreadable", f"accessor {i} names bufferView {v}; there are {len(view_len)}", path)
            length, stride = view_len[v]
            stride = stride if isinstance(stride, int) and stride > 0 else size
            end = _int(acc.get("byteOffset"), f"accessor {i} byteOffset", path, 0) + stride * (count - 1) + size
            if end > length:
                raise AssetError("unreadable", f"accessor {i} declares {count:,} elements ({end:,} bytes) but its "
                             f"bufferView {v} holds {length:,}", path)
    if total > memory_mb * MiB:
        raise AssetError("too_large", f"the accessors declare {total / MiB:,.0f} MiB of data; the loading budget is "
                     f"{memory_mb:,} MiB (DEFAULTS.asset_memory_mb)", path)
    for i, img in enumerate(_list(doc.get("images"))):
        data = _image_bytes(img, doc, binary) if isinstance(img, dict) else None
        if data is not None:
            check_image_header(data, f"image {i}", resolver.max_texture_pixels, path)


def _image_bytes(img: dict, doc: dict, binary: _BinChunk | None) -> bytes | None:
    """An image's bytes when they are in the file itself (a data: URI or a view of the GLB chunk); images in
    files beside the asset are checked by the resolver when they are read."""
    if isinstance(img.get("uri"), str):
        return _data_uri(img["uri"])
    views = _list(doc.get("bufferViews"))
    v = img.get("bufferView")
    if binary is None or not isinstance(v, int) or not 0 <= v < len(views) or views[v].get("buffer") != 0:
        return None
    return binary.read(views[v].get("byteOffset", 0), views[v]["byteLength"])


# ----------------------------------------------------------------------------------------------- PLY, OFF, STL, OBJ


def _check_ply(path: Path, max_faces: int) -> None:
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise AssetError("unreadable", "not a PLY file (no 'ply' magic or no end_header in the first 64 KiB)", path)
    body = path.stat().st_size - (head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head))
    fmt, elements = "", []  # (name, count, min bytes per row as binary, min tokens per row as text)
    for line in head[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "format":
            fmt = words[1]
        elif len(words) == 3 and words[0] == "element":
            if not re.fullmatch(r"\d+", words[2]):
                raise AssetError("unreadable", f"PLY element {words[1]!r} has count {words[2]!r}", path)
            elements.append([words[1], int(words[2]), 0, 0])
        elif words[:1] == ["property"] and elements:
            if len(words) >= 5 and words[1] == "list":
                n = 3 if words[-1] in ("vertex_indices", "vertex_index") else 0  # a face has 3 corners or more
                elements[-1][2] += _PLY_TYPES.get(words[2], 1) + n * _PLY_TYPES.get(words[3], 1)
                elements[-1][3] += 1 + n
            elif len(words) >= 3:
                elements[-1][2] += _PLY_TYPES.get(words[1], 1)
                elements[-1][3] += 1
    faces = sum(e[1] for e in elements if e[0] == "face")
    if faces > max_faces:
        raise AssetError("too_many_faces", f"the PLY header declares {faces:,} faces > limit {max_faces:,}", path)
    # binary: each row's fixed bytes; text: each value at least one character and a separator
    need = sum(e[1] * (e[2] if fmt.startswith("binary") else 2 * e[3]) for e in elements)
    if need > body:
        counts = ", ".join(f"{e[1]:,} {e[0]}" for e in elements)
        raise AssetError("unreadable", f"the PLY header declares {counts} (at least {need:,} bytes) but the file holds "
                     f"{body:,} bytes after the header", path)


def _check_off(path: Path, max_faces: int) -> None:
    with open(path, "rb") as f:
        head = f.read(64 * 1024).decode("ascii", "replace")
    words = [w for line in head.splitlines() if not line.lstrip().startswith("#") for w in line.split()]
    if not words or not words[0].endswith("OFF"):
        raise AssetError("unreadable", "not an OFF file (no OFF keyword)", path)
    if len(words) < 3 or not all(re.fullmatch(r"\d+", w) for w in words[1:3]):
        raise AssetError("unreadable", f"the OFF header has no vertex and face counts ({' '.join(words[1:4])!r})", path)
    nv, nf = int(words[1]), int(words[2])
    if nf > max_faces:
        raise AssetError("too_many_faces", f"the OFF header declares {nf:,} faces > limit {max_faces:,}", path)
    need = 6 * nv + 8 * nf  # "0 0 0\n" per vertex, "3 0 1 2\n" per face at the least
    if need > path.stat().st_size:
        raise AssetError("unreadable", f"the OFF header declares {nv:,} vertices and {nf:,} faces (at least {need:,} "
                     f"bytes) but the file holds {path.stat().st_size:,}", path)


def _check_stl(path: Path, max_faces: int) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(84)
    if len(head) < 84:
        return  # too short to be binary: the parser decides
    (count,) = struct.unpack_from("<I", head, 80)
    if head[:5].lower() == b"solid" and size != 84 + 50 * count:
        return  # a text STL (a binary one may start with "solid" too; its size then matches its count)
    if count > max_faces:
        raise AssetError("too_many_faces", f"the binary STL header declares {count:,} triangles > limit {max_faces:,}",
                     path)
    if 84 + 50 * count > size:
        raise AssetError("unreadable", f"the binary STL header declares {count:,} triangles ({84 + 50 * count:,} bytes) "
                     f"but the file holds {size:,}", path)


def _check_obj(path: Path, max_faces: int) -> None:
    faces, tail = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            block = tail + chunk
            faces += block.count(b"\nf ") + block.count(b"\nf\t")
            tail = block[-2:]  # too short to hold a match already counted; completes one split across chunks
            if faces > max_faces:
                raise AssetError("too_many_faces", f"the OBJ has more than {max_faces:,} face lines (limit "
                             f"{max_faces:,})", path)
