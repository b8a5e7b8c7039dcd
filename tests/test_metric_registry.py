"""Metrics live in the shared Registry: unknown names get an actionable error, and a registered metric is scored."""

import json
from typing import ClassVar

import pytest
import trimesh
from typer.testing import CliRunner

from mme3dr.cli import _METRICS_HELP, app
from mme3dr.data import load_benchmark
from mme3dr.errors import InputError, UnknownNameError
from mme3dr.evaluate import evaluate
from mme3dr.metrics import specs
from mme3dr.metrics.base import MetricResult, PromptMetric
from mme3dr.metrics.specs import METRICS, MetricSpec, get_metric, metric_names
from mme3dr.render.presets import get_preset
from mme3dr.scoring import build_metrics, parse_metrics, score_run

PRESET = get_preset("canonical").with_overrides(resolution=32, n_views=2)


def test_an_unknown_metric_names_the_closest_and_what_to_do():
    for call in (lambda: get_metric("clp"), lambda: parse_metrics("geometry,clp"),
                 lambda: build_metrics(["clp"], PRESET)):
        with pytest.raises(UnknownNameError, match=r"unknown metric 'clp'\. Did you mean 'clip'\?") as exc:
            call()
        assert "Registered: ar3d_compat_clip, ar3d_compat_kd, clip, fid, fid_dinov2, geometry" in str(exc.value)
        assert "Pass --metrics with registered names" in str(exc.value)


def test_the_cli_refuses_an_unknown_metric_before_any_work(tmp_path):
    res = CliRunner().invoke(app, ["score", str(tmp_path / "RUN"), "--metrics", "geometry,kdi"])
    assert res.exit_code == 2 and "unknown metric 'kdi'. Did you mean 'kid'?" in " ".join(res.output.split())
    assert not (tmp_path / "RUN").exists()


def test_the_registry_holds_every_metric_the_cli_offers():
    assert metric_names("prompt") == ["ar3d_compat_clip", "ar3d_compat_kd", "clip", "geometry", "vlm"]
    assert metric_names("set") == ["fid", "fid_dinov2", "kid", "kid_dinov2"]
    assert all(f" {name}," in _METRICS_HELP or f" {name} " in _METRICS_HELP for name in metric_names())
    assert [n for n in metric_names() if not get_metric(n).needs_weights] == ["geometry"]
    assert {n: (get_metric(n).extractor, get_metric(n).distance) for n in metric_names("set")} == {
        "kid": ("inception", "kid"), "fid": ("inception", "fid"), "kid_dinov2": ("dinov2", "kid"),
        "fid_dinov2": ("dinov2", "fid")}
    with pytest.raises(InputError, match="a set metric needs extractor in inception, dinov2"):
        MetricSpec("kid_clip", "set", extractor="clip", distance="kid")
    with pytest.raises(InputError, match="a prompt metric needs build"):
        MetricSpec("mine", "prompt")


class FileSize(PromptMetric):
    """Size of the generated file in bytes (a metric of the asset, no weights)."""

    name = "file_size"
    needs = "asset"
    directions: ClassVar[dict[str, str]] = {"bytes": "none"}

    def config(self):
        return {}

    def score(self, item):
        return MetricResult(values={"bytes": float(item.asset_path.stat().st_size)})


def test_a_registered_metric_is_built_and_scored(tmp_path, monkeypatch):
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))  # registered for this test only
    METRICS.register("file_size", MetricSpec("file_size", "prompt", lambda options, ref: FileSize(),
                                             needs_weights=False))
    assert get_metric("file_size") is specs.METRICS.get("file_size")
    for r in load_benchmark(limit=2):
        trimesh.creation.icosphere(subdivisions=1).export(tmp_path / f"{r.id}.glb")
    run = tmp_path / "RUN"
    evaluate("folder", run, {"root": str(tmp_path)}, ["file_size"], limit=2, preset=PRESET, report=False,
             progress=False)
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in rows} == {"file_size"} and len(rows) == 2
    for r in rows:
        gen = next(json.loads(g) for g in (run / "generations.jsonl").read_text().splitlines()
                   if json.loads(g)["prompt_id"] == r["prompt_id"])
        assert r["values"]["bytes"] == (run / gen["asset_path"]).stat().st_size
    assert score_run(run, ["file_size"], PRESET, progress=False).skipped == {"file_size": 2}  # cached
