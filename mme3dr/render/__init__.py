"""Multi-view rendering: camera protocols, named presets, the pyrender renderer, run and reference rendering."""

from mme3dr.render.cameras import CameraSet, read_transforms
from mme3dr.render.presets import PRESETS, RenderPreset, get_preset
from mme3dr.render.references import build_references
from mme3dr.render.renderer import RenderOutput, get_renderer
from mme3dr.render.runs import render_asset, render_run

__all__ = ["PRESETS", "CameraSet", "RenderOutput", "RenderPreset", "build_references", "get_preset", "get_renderer",
           "read_transforms", "render_asset", "render_run"]
