"""Choose the headless OpenGL platform for pyrender: EGL (GPU or Mesa) or OSMesa.

PyOpenGL binds its platform when first imported, so the choice is made once per process, before pyrender is
imported: ``MME3DR_GL_BACKEND`` or ``PYOPENGL_PLATFORM`` (``egl``/``osmesa``) if set, else EGL if a probe in a
subprocess can create a context, else OSMesa.
"""

from __future__ import annotations

import os
import subprocess
import sys

from mme3dr.errors import InputError, SetupError

BACKENDS = ("egl", "osmesa")
_PROBE = ("import os; os.environ['PYOPENGL_PLATFORM'] = {b!r}; os.environ['PYGLET_HEADLESS'] = '1'; "
          "import pyrender; r = pyrender.OffscreenRenderer(8, 8); r.delete()")
_chosen: str | None = None


def probe(backend: str, timeout: float = 60.0) -> str | None:
    """``None`` if ``backend`` can create an offscreen context in a fresh process, else the error text."""
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE.format(b=backend)], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"
    if res.returncode == 0:
        return None
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    return lines[-1] if lines else f"exit status {res.returncode}"


def select_backend(preferred: str | None = None) -> str:
    """Set ``PYOPENGL_PLATFORM`` for this process and return the backend name (see module docstring)."""
    global _chosen
    preferred = (preferred or os.environ.get("MME3DR_GL_BACKEND") or os.environ.get("PYOPENGL_PLATFORM") or "auto").lower()
    if preferred not in (*BACKENDS, "auto"):
        raise InputError(f"unknown GL backend {preferred!r}; use one of {', '.join(BACKENDS)} or auto")
    if _chosen is not None:
        if preferred not in ("auto", _chosen):
            raise SetupError(f"this process already renders with {_chosen}; PyOpenGL cannot switch to {preferred} "
                             "in the same process (start a new one)")
        return _chosen
    if preferred == "auto":
        if "OpenGL" in sys.modules:  # someone imported PyOpenGL already: its platform is fixed
            preferred = os.environ.get("PYOPENGL_PLATFORM", "egl")
        else:
            errors = {}
            for b in BACKENDS:
                errors[b] = probe(b)
                if errors[b] is None:
                    preferred = b
                    break
            else:
                raise SetupError(
                    "no headless OpenGL backend works here: "
                    + "; ".join(f"{b}: {e}" for b, e in errors.items())
                    + ". Install EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri; on an "
                    "NVIDIA machine the driver's EGL) or OSMesa (apt-get install libosmesa6), then retry; "
                    "force one with MME3DR_GL_BACKEND=egl|osmesa.")
    os.environ["PYOPENGL_PLATFORM"] = preferred
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    _chosen = preferred
    return preferred
