"""``mme3dr score``: run metrics over a run's assets and renders.

Per-prompt metrics write one record per (prompt, metric) to ``RUN/scores.jsonl`` (appended and fsynced as each
prompt is scored; re-running skips records whose metric config hash, render preset hash and asset sha256 are
unchanged). Set metrics (KID/FID on Inception or DINOv2 features) compare the run's renders with a reference set
rendered with the same preset, overall and per category, and go to ``RUN/set_scores.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mme3dr.categories import CATEGORIES
from mme3dr.data import load_benchmark
from mme3dr.defaults import DEFAULTS
from mme3dr.generation import read_generations
from mme3dr.jsonl import append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from mme3dr.metrics.base import MetricResult, PromptMetric, ScoreItem, composite
from mme3dr.registry import did_you_mean
from mme3dr.render.output import file_sha256, read_render_record
from mme3dr.render.presets import RenderPreset
from mme3dr.render.references import REFERENCE_FILE
from mme3dr.render.runs import RENDERS_DIR

#: set metric -> (feature extractor, distance)
SET_METRICS = {"kid": ("inception", "kid"), "fid": ("inception", "fid"),
               "kid_dinov2": ("dinov2", "kid"), "fid_dinov2": ("dinov2", "fid")}
PROMPT_METRICS = ("clip", "vlm", "geometry", "ar3d_compat_clip", "ar3d_compat_kd")


@dataclass
class ScoreOptions:
    """Model choices for every metric; the CLI's options map one to one onto these fields."""

    device: str | None = None
    batch_size: int = DEFAULTS.batch_size
    clip_model: str = DEFAULTS.clip_model
    clip_pretrained: str = DEFAULTS.clip_pretrained
    clip_weights: str | None = None
    inception_weights: str | None = None
    dinov2_model: str = "facebook/dinov2-base"
    vlm_model: str = DEFAULTS.vlm_model
    vlm_server: str | None = None
    vlm_api_key: str | None = None


def _clip(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.clip import ClipScore

    return ClipScore(o.clip_model, o.clip_pretrained, o.clip_weights, o.device, o.batch_size)


def _vlm(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.vlm import OpenAIVLM, TransformersVLM, VLMJudge

    if o.vlm_server:
        return VLMJudge(OpenAIVLM(o.vlm_server, o.vlm_model, api_key=o.vlm_api_key))
    backend = TransformersVLM(o.vlm_model, device=o.device)
    backend.load()  # fail here, once, with the missing-weights advice, not once per prompt
    return VLMJudge(backend)


def _geometry(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.geometry import GeometryMetric

    return GeometryMetric()


def _compat_clip(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.clip import ClipModel
    from mme3dr.metrics.compat import Ar3dCompatClip

    return Ar3dCompatClip(ClipModel(o.clip_model, o.clip_pretrained, o.clip_weights, o.device, o.batch_size))


def _compat_kd(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.compat import PREPROCESSING, Ar3dCompatKD
    from mme3dr.metrics.features import DinoV2Features

    if ref is None:
        raise ValueError("ar3d_compat_kd needs --reference REF with renders of each prompt's ground-truth object")
    return Ar3dCompatKD(ref, DinoV2Features(o.dinov2_model, o.device, o.batch_size, preprocessing=PREPROCESSING))


FACTORIES: dict[str, Callable[[ScoreOptions, Path | None], PromptMetric]] = {
    "clip": _clip, "vlm": _vlm, "geometry": _geometry, "ar3d_compat_clip": _compat_clip, "ar3d_compat_kd": _compat_kd}


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    known = (*PROMPT_METRICS, *SET_METRICS)
    for m in names:
        if m not in known:
            raise ValueError(f"unknown metric {m!r}.{did_you_mean(m, known)} Known: {', '.join(known)}")
    return names


@dataclass
class ScoreSummary:
    scored: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    set_scores: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for m in self.scored:
            out.append(f"{m}: {self.scored[m]} scored, {self.skipped.get(m, 0)} up to date, "
                       f"{len(self.errors.get(m, []))} errors")
            out += [f"  ERROR {pid}: {e}" for pid, e in self.errors.get(m, [])[:20]]
        for m, res in self.set_scores.items():
            out.append(f"{m}: overall {_fmt(res['overall'])}; per category: "
                       + ", ".join(f"{c} {_fmt(v)}" for c, v in res["per_category"].items()))
        return out


def _fmt(entry: dict) -> str:
    if entry.get("value") is None:
        return f"n/a ({entry.get('error')})"
    if "value_x100" in entry:
        return f"{entry['value_x100']:.3f} +- {entry['std_x100']:.3f} (x100)"
    return f"{entry['value']:.3f}"


def _items(run_dir: Path, preset: RenderPreset) -> list[tuple[ScoreItem, dict | None]]:
    """A ScoreItem per generated asset, with the render record of ``preset`` (None when not rendered)."""
    checklists = {r.id: r.checklist for r in load_benchmark()}
    folder = run_dir / RENDERS_DIR / preset.tag
    out = []
    for pid, rec in read_generations(run_dir).items():
        asset = rec.resolved_asset(run_dir)
        if asset is None:
            continue
        render = read_render_record(folder / pid)
        out.append((ScoreItem(pid, rec.category, rec.prompt, checklists.get(pid, ()), asset, rec.up_axis,
                              folder / pid if render else None), render))
    return out


def build_metrics(metrics: Sequence[str], preset: RenderPreset, reference: Path | str | None = None,
                  options: ScoreOptions | None = None) -> dict[str, PromptMetric]:
    """The per-prompt metric objects (weights loaded), so a missing weight or reference fails before any work."""
    options = options or ScoreOptions()
    names = parse_metrics(metrics)
    if any(m in SET_METRICS for m in names) and reference is None:
        raise ValueError(f"{', '.join(m for m in names if m in SET_METRICS)} compare against a reference set: pass "
                         f"--reference REF (build one with `mme3dr references build --preset {preset.name}`)")
    ref_folder = _reference_folder(reference, preset) if reference is not None else None
    return {m: FACTORIES[m](options, ref_folder) for m in names if m in PROMPT_METRICS}


def score_run(run_dir: Path | str, metrics: Sequence[str], preset: RenderPreset, reference: Path | str | None = None,
              options: ScoreOptions | None = None, progress: bool = True,
              built: dict[str, PromptMetric] | None = None) -> ScoreSummary:
    """Score a run with ``metrics`` (names from PROMPT_METRICS and SET_METRICS); ``built`` reuses
    :func:`build_metrics` output."""
    run_dir, options = Path(run_dir), options or ScoreOptions()
    metrics = parse_metrics(metrics)
    items = _items(run_dir, preset)
    if not items:
        raise FileNotFoundError(f"{run_dir}: no generated assets; run `mme3dr generate ... --out RUN` first")
    built = built if built is not None else build_metrics(metrics, preset, reference, options)
    ref_folder = _reference_folder(reference, preset) if reference is not None else None
    summary = ScoreSummary()
    log = run_dir / DEFAULTS.scores_file
    done = {_key(r) for r in read_jsonl(log) if r.get("error") is None}
    for name, metric in built.items():
        chash = metric.config_hash()
        summary.scored[name], summary.skipped[name], summary.errors[name] = 0, 0, []
        for item, render in tqdm(items, desc=name, unit="prompt", disable=not progress):
            sha = (render or {}).get("asset_sha256")
            if sha is None and metric.needs == "asset" and item.asset_path.is_file():
                sha = file_sha256(item.asset_path)  # asset metrics need no render to be cached
            key = (item.prompt_id, name, chash, preset.hash if metric.needs == "renders" else None, sha)
            if sha is not None and key in done:
                summary.skipped[name] += 1
                continue
            start = time.perf_counter()
            if metric.needs == "renders" and item.render_dir is None:
                result = MetricResult(error=f"not rendered with preset {preset.tag}; run `mme3dr render {run_dir} "
                                            f"--preset {preset.name}` first")
            else:
                [result] = metric.score_many([item])
            append_jsonl(log, {"prompt_id": item.prompt_id, "category": item.category, "metric": name,
                               "config_hash": chash, "config": metric.config(),
                               "preset_hash": key[3], "asset_sha256": sha, "directions": metric.directions,
                               **asdict(result), "seconds": round(time.perf_counter() - start, 4)})
            if result.error:
                summary.errors[name].append((item.prompt_id, result.error))
            else:
                summary.scored[name] += 1
    if log.exists():  # one record per (prompt, metric): the latest
        latest = {(r["prompt_id"], r["metric"]): r for r in read_jsonl(log)}
        write_jsonl(log, latest.values())
    set_names = [m for m in metrics if m in SET_METRICS]
    if set_names:
        summary.set_scores = score_sets(run_dir, items, ref_folder, set_names, preset, options, progress)
    return summary


def _key(r: dict) -> tuple:
    return (r["prompt_id"], r["metric"], r["config_hash"], r.get("preset_hash"), r.get("asset_sha256"))


def _reference_folder(reference: Path | str, preset: RenderPreset) -> Path:
    folder = Path(reference) / preset.tag
    if not (folder / REFERENCE_FILE).exists():
        have = sorted(p.parent.name for p in Path(reference).glob(f"*/{REFERENCE_FILE}"))
        raise FileNotFoundError(f"reference set {reference} has no renders with preset {preset.tag} (it has: "
                                f"{', '.join(have) or 'none'}); build it with `mme3dr references build --preset "
                                f"{preset.name} --out {reference} ...`")
    return folder


def score_sets(run_dir: Path, items: list[tuple[ScoreItem, dict | None]], ref_folder: Path, names: Sequence[str],
               preset: RenderPreset, options: ScoreOptions, progress: bool = True) -> dict[str, Any]:
    """KID/FID of the run's views against the reference views, overall and per category; writes set_scores.json."""
    from mme3dr.metrics.features import DinoV2Features, FeatureCache, InceptionFeatures
    from mme3dr.metrics.fidelity import default_subset_size, fid_from_features, kid_from_features

    ref = json.loads((ref_folder / REFERENCE_FILE).read_text())
    ref_objs = [o for o in ref["objects"] if o.get("ok")]
    gen = {c: [(it.render_dir, r["asset_sha256"]) for it, r in items if r and it.category == c] for c in CATEGORIES}
    gen = {c: v for c, v in gen.items() if v}
    ref_by_cat = {c: [o for o in ref_objs if o.get("category") == c] for c in CATEGORIES}
    extractors = {}
    out: dict[str, Any] = {}
    path = run_dir / DEFAULTS.set_scores_file
    if path.exists():
        out = json.loads(path.read_text())

    def views(entries: list[tuple[Path, str]]) -> list[str]:
        return [f"{d}/{p.name}@{sha[:12]}" for d, sha in entries for p in sorted(d.glob("[0-9][0-9][0-9].png"))]

    def ref_entries(objs: list[dict]) -> list[tuple[Path, str]]:
        return [(ref_folder / o["id"], (read_render_record(ref_folder / o["id"]) or {}).get("asset_sha256", o["id"]))
                for o in objs]

    def load(key: str):
        from PIL import Image

        return composite(Image.open(key.rsplit("@", 1)[0]))

    for name in names:
        kind, dist = SET_METRICS[name]
        if kind not in extractors:
            ext = (InceptionFeatures(options.inception_weights, options.device, options.batch_size) if kind == "inception"
                   else DinoV2Features(options.dinov2_model, options.device, options.batch_size))
            extractors[kind] = (ext, FeatureCache(run_dir / RENDERS_DIR / preset.tag / "features", ext),
                                FeatureCache(ref_folder / "features", ext))
        ext, gen_cache, ref_cache = extractors[kind]
        ref_feats = ref_cache.get(views(ref_entries(ref_objs)), load)
        res: dict[str, Any] = {"extractor": ext.weights_id, "preset_hash": preset.hash, "reference": str(ref_folder),
                               "per_category": {}}
        groups = {"overall": [e for c in gen for e in gen[c]], **gen}
        for group, entries in tqdm(groups.items(), desc=name, disable=not progress):
            g = gen_cache.get(views(entries), load)
            same_cat = ref_by_cat.get(group) or []
            r = ref_cache.get(views(ref_entries(same_cat)), load) if same_cat else ref_feats
            entry = {"n_gen": len(g), "n_ref": len(r),
                     "reference_subset": group if same_cat else "all"}
            try:
                if dist == "kid":
                    size = default_subset_size(len(g), len(r))
                    mean, std = kid_from_features(g, r, subset_size=size)
                    entry.update(value=mean, std=std, value_x100=100 * mean, std_x100=100 * std, subset_size=size,
                                 subsets=100)
                else:
                    entry.update(value=fid_from_features(g, r))
            except ValueError as exc:
                entry.update(value=None, error=str(exc))
            if group == "overall":
                res["overall"] = entry
            else:
                res["per_category"][group] = entry
        out[name] = res
    atomic_write_text(path, json.dumps(out, indent=1))
    return {n: out[n] for n in names}
