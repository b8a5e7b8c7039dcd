"""The ``mme3dr`` command line (typer). Every command has a Python twin; defaults come from mme3dr.defaults."""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mme3dr import runfiles
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import (EXIT_BUG, EXIT_USER_ERROR, InputError, MissingInputError, Mme3drError,
                           describe_os_error)

app = typer.Typer(help="MME-3DR benchmark toolkit: prompts, generator adapters, asset checks, renders.",
                  no_args_is_help=True, add_completion=False)
# Piped output is not wrapped at 80 columns: tables keep their natural width, Markdown stays one line per row.
out = Console(width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True, soft_wrap=True)

#: Frames of a bug's traceback that are printed (the innermost ones).
BUG_TRACEBACK_FRAMES = 8


def friendly_errors(fn):
    """Report errors as :mod:`mme3dr.errors` says: a user-facing error (:class:`~mme3dr.errors.Mme3drError`, an
    ``OSError`` such as a full disk, a missing dependency) as one red line and exit code 2; anything else as a bug:
    a short traceback, a line asking to report it, and exit code 70."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.ClickException):  # click's own exits and usage errors
            raise
        except Exception as exc:  # noqa: BLE001 -- sorted into user errors and bugs below
            raise typer.Exit(report_error(exc)) from None
    return wrapper


def report_error(exc: Exception) -> int:
    """Print ``exc`` for the user and return the exit code (see :func:`friendly_errors`)."""
    if isinstance(exc, (Mme3drError, ImportError)):  # ImportError: a missing optional dependency or plug-in
        message = str(exc)
    elif isinstance(exc, OSError):
        message = describe_os_error(exc)
    else:
        import traceback

        from mme3dr import __version__

        tb = "".join(traceback.format_exception(exc, limit=-BUG_TRACEBACK_FRAMES, chain=False))
        err.print(f"[red]internal error (a bug in mme3dr {escape(__version__)}):[/red]", highlight=False)
        err.print(tb.rstrip(), markup=False, highlight=False)
        err.print(f"This is a bug in mme3dr {__version__}, not a problem with your input or files. Please report "
                  f"it to the mme3dr maintainers with the command you ran and the lines above (Python "
                  f"{sys.version.split()[0]} on {sys.platform}).", markup=False, highlight=False)
        return EXIT_BUG
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    return EXIT_USER_ERROR


class PromptFormat(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"


CategoryOpt = Annotated[Optional[list[str]], typer.Option(
    "--category", "-c", help="Category key or name (repeatable), e.g. spatial, world-knowledge.")]
LimitOpt = Annotated[Optional[int], typer.Option(
    "--limit", "-n", min=1, help="Keep N prompts in total, spread evenly over the categories.")]
SourceOpt = Annotated[Optional[str], typer.Option(
    "--source", help="Prompt file (.jsonl/.json), dataset folder or hub id; default: the packaged 249.")]


@app.command()
@friendly_errors
def prompts(category: CategoryOpt = None, limit: LimitOpt = None, source: SourceOpt = None,
            format: Annotated[PromptFormat, typer.Option("--format", "-f", help="Output format.")] = PromptFormat.table) -> None:
    """List the benchmark prompts (filter by category; table, csv or jsonl)."""
    from mme3dr.data import load_benchmark

    bench = load_benchmark(categories=category, limit=limit, source=source)
    if format is PromptFormat.jsonl:
        for r in bench:
            sys.stdout.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    elif format is PromptFormat.csv:
        w = csv.writer(sys.stdout)
        w.writerow(["id", "category", "object_class", "source", "prompt", "n_checks"])
        for r in bench:
            w.writerow([r.id, r.category, r.object_class, r.source, r.prompt, len(r.checklist)])
    else:
        t = Table(title=f"{len(bench)} prompts ({bench.source})")
        for col in ("id", "category", "class", "src", "prompt", "checks"):
            t.add_column(col, overflow="fold")
        for r in bench:
            t.add_row(r.id, r.category, r.object_class, r.source, r.prompt, str(len(r.checklist)))
        out.print(t)
        out.print("  ".join(f"{k}: {n}" for k, n in bench.counts().items()))


@app.command()
@friendly_errors
def models() -> None:
    """List the registered generator adapters (built-in and from installed plug-ins)."""
    from mme3dr.adapters import GENERATORS, describe

    t = Table(title="registered models (use with --model NAME)")
    for col in ("name", "origin", "target", "description"):
        t.add_column(col, overflow="fold")
    for name in GENERATORS.names():
        try:
            desc = describe(name)
        except ImportError as exc:
            desc = f"[red]cannot import: {exc}[/red]"
        t.add_row(name, GENERATORS.origin(name), GENERATORS.target_string(name), desc)
    out.print(t)


@app.command()
@friendly_errors
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `mme3dr models`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; re-running resumes).")],
    model_arg: Annotated[Optional[list[str]], typer.Option(
        "--model-arg", "-a", help="key=value passed to the model (repeatable).")] = None,
    category: CategoryOpt = None, limit: LimitOpt = None, source: SourceOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed given to the generator.")] = DEFAULTS.seed,
    retry_failed: Annotated[bool, typer.Option(help="Generate prompts that failed in an earlier call again.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Generate an asset for every prompt into RUN/assets and log each outcome in RUN/generations.jsonl.

    A prompt whose generation fails or times out is recorded with its error and the run goes on. Exit code 0
    when the run holds at least one asset (failures are listed in the summary), 1 when it holds none.
    """
    from mme3dr.adapters import ModelSpec, coerce_model_args, create_generator, parse_model_args
    from mme3dr.data import load_benchmark
    from mme3dr.generation import generate_run
    from mme3dr.runlock import run_lock

    quiet_libraries(progress)
    args = coerce_model_args(model, parse_model_args(model_arg or []))
    generator = create_generator(model, **args)
    bench = load_benchmark(categories=category, limit=limit, source=source)
    generator.check()  # missing weights stop here, before the run folder is created
    with run_lock(out_dir):
        summary = generate_run(generator, bench, out_dir, seed=seed, model_spec=ModelSpec(model, args),
                               progress=progress, retry_failed=retry_failed)
    for line in summary.lines():
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    from mme3dr.generation import read_generations

    if not any(r.ok for r in read_generations(out_dir).values()):
        raise typer.Exit(1)


@app.command()
@friendly_errors
def validate(run: Annotated[Path, typer.Argument(help="Run folder written by `mme3dr generate`.")],
             progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True) -> None:
    """Check every asset of a run (readable, has faces, finite, sane size); exit 1 if any has a problem."""
    from mme3dr.validation import validate_run

    reports = validate_run(run, progress=progress)
    bad = [r for r in reports if not r.ok]
    if bad:
        t = Table(title=f"{len(bad)} of {len(reports)} assets have problems")
        for col in ("prompt", "reason", "message"):
            t.add_column(col, overflow="fold")
        for r in bad:
            t.add_row(r.prompt_id, r.reason or "", r.message or "")
        out.print(t)
    ok = len(reports) - len(bad)
    textured = sum(r.has_texture for r in reports)
    coloured = sum(r.has_vertex_colors for r in reports)
    out.print(f"{ok}/{len(reports)} assets valid ({textured} textured, {coloured} vertex-coloured); "
              f"details in {Path(run) / runfiles.VALIDATION}")
    if bad:
        raise typer.Exit(1)


PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Render preset (see `mme3dr presets`).")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", min=1, help="Rendering processes.")]
ScoreWorkersOpt = Annotated[int, typer.Option(
    "--workers", "-j", min=1, help="Processes for the CPU-only metrics (geometry); 1 scores in this process.")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="OpenGL backend: egl or osmesa (default: auto, or MME3DR_GL_BACKEND).")]


def _preset(name: str, background: str | None = None, resolution: int | None = None):
    from mme3dr.render.presets import get_preset

    return get_preset(name).with_overrides(background=background, resolution=resolution)


@app.command()
@friendly_errors
def presets() -> None:
    """List the render presets with their hashes and parameters."""
    from mme3dr.render.presets import PRESETS

    t = Table(title="render presets (folder name = <name>-<hash>)")
    for col in ("name", "hash", "views", "res", "fov", "background", "shading", "lights", "double-sided"):
        t.add_column(col)
    for name in PRESETS.names():
        p = PRESETS.get(name)
        n = p.n_views if p.cameras != "yaw-elevation" else len(p.views_deg)
        views = "from --cameras" if p.cameras == "file" else f"{n} {p.cameras}"
        t.add_row(name, p.hash, views, str(p.resolution), f"{p.fov_deg:g}", p.background, p.shading, p.light_rig,
                  str(p.double_sided))
    out.print(t)


@contextmanager
def _locked(run: Path, ranks):
    """The run lock, held by rank 0 (:mod:`mme3dr.distributed`; the other ranks write only their own prompts'
    folders); no rank goes on before rank 0 holds it."""
    from mme3dr.runlock import run_lock

    with run_lock(run) if ranks.main else nullcontext():
        ranks.barrier()
        yield


@app.command()
@friendly_errors
def render(
    target: Annotated[Path, typer.Argument(help="A run folder (renders every asset) or one mesh file.")],
    preset: PresetOpt = DEFAULTS.preset,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (required for one mesh).")] = None,
    cameras: Annotated[Optional[Path], typer.Option(
        "--cameras", help="transforms.json to render from (or, for a run, a folder of <prompt_id>/transforms.json).")] = None,
    background: Annotated[Optional[str], typer.Option(help="Override: transparent, white or black.")] = None,
    resolution: Annotated[Optional[int], typer.Option(min=8, help="Override the preset's resolution.")] = None,
    up_axis: Annotated[str, typer.Option(help="Up axis of a single mesh file (runs use each record's).")] = DEFAULTS.up_axis,
    depth: Annotated[bool, typer.Option(help="Also write depth.npz.")] = False,
    normals: Annotated[bool, typer.Option(help="Also write NNN_normal.png.")] = False,
    workers: WorkersOpt = DEFAULTS.render_workers, backend: BackendOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Render multi-view images: a run into RUN/renders/<preset>-<hash>/<prompt_id>/, or one mesh into --out."""
    from mme3dr.render.runs import render_asset, render_run

    p = _preset(preset, background, resolution)
    if target.is_dir() and (target / runfiles.GENERATIONS).exists():
        from mme3dr.distributed import joined

        with joined() as ranks, _locked(target, ranks):
            summary = render_run(target, p, cameras, workers, backend, depth, normals, progress and ranks.main, ranks)
        if not ranks.main:
            return
    elif target.is_file():
        if out_dir is None:
            raise InputError("rendering one mesh needs --out DIR")
        summary = render_asset(target, out_dir, p, cameras, up_axis, backend, depth, normals)
    else:
        raise MissingInputError(f"{target} is neither a run folder (with {runfiles.GENERATIONS}) nor a mesh file")
    for line in summary.lines():
        err.print(line, highlight=False, markup=False, soft_wrap=True)
    if summary.failed and not (summary.rendered + summary.skipped):
        raise typer.Exit(1)


# Options shared by `score` and `evaluate` (one definition, one set of defaults).
_METRICS_HELP = ("Comma-separated: clip, kid, fid, kid_dinov2, fid_dinov2, vlm, geometry, ar3d_compat_clip, "
                 "ar3d_compat_kd (geometry needs no weights).")
MetricsOpt = Annotated[str, typer.Option("--metrics", help=_METRICS_HELP)]
ReferenceOpt = Annotated[Optional[Path], typer.Option(help="Reference set for kid/fid (`mme3dr references build`).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="torch device for metrics (default: cuda if available).")]
BatchOpt = Annotated[Optional[int], typer.Option(
    min=1, help=f"Images per forward pass of the image models (a batch spans prompts); default: "
                f"{DEFAULTS.gpu_batch_size} on a GPU, {DEFAULTS.batch_size} on the CPU.")]
DecodeOpt = Annotated[int, typer.Option(
    "--decode-workers", min=0,
    help="Workers that decode the rendered views for the image metrics: processes on a GPU, threads on the CPU "
         "(0: none).")]
ClipModelOpt = Annotated[str, typer.Option(help="open_clip model name.")]
ClipTagOpt = Annotated[str, typer.Option(help="open_clip pretrained tag.")]
ClipWeightsOpt = Annotated[Optional[str], typer.Option(help="Local CLIP checkpoint file.")]
InceptionOpt = Annotated[Optional[str], typer.Option(
    help="Local Inception-v3 weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth).")]
Dinov2Opt = Annotated[str, typer.Option(help="DINOv2 hub id or local folder.")]
VlmModelOpt = Annotated[str, typer.Option(help="Qwen2-VL/Qwen2.5-VL hub id or local folder.")]
VlmServerOpt = Annotated[Optional[str], typer.Option(
    help=f"OpenAI-compatible server URL (e.g. vLLM) instead; API key from ${DEFAULTS.vlm_api_key_env}.")]


def _score_options(device, batch_size, clip_model, clip_pretrained, clip_weights, inception_weights, dinov2_model,
                   vlm_model, vlm_server, decode_workers):
    from mme3dr.metrics.specs import ScoreOptions

    return ScoreOptions(device, batch_size, clip_model, clip_pretrained, clip_weights, inception_weights,
                        dinov2_model, vlm_model, vlm_server, decode_workers=decode_workers)


def quiet_libraries(progress: bool) -> None:
    """With ``--no-progress``: no progress bars from the hub / transformers (weights loading) either. Set before
    those libraries are imported (they read the variable at import time)."""
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


@app.command()
@friendly_errors
def score(
    run: Annotated[Path, typer.Argument(help="Run folder (generated, and rendered with --preset).")],
    metrics: Annotated[str, typer.Option("--metrics", "-m", help=_METRICS_HELP)] = ",".join(DEFAULTS.metrics),
    reference: ReferenceOpt = None,
    preset: PresetOpt = DEFAULTS.preset,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    decode_workers: DecodeOpt = DEFAULTS.decode_workers,
    clip_model: ClipModelOpt = DEFAULTS.clip_model,
    clip_pretrained: ClipTagOpt = DEFAULTS.clip_pretrained,
    clip_weights: ClipWeightsOpt = None,
    inception_weights: InceptionOpt = None,
    dinov2_model: Dinov2Opt = DEFAULTS.dinov2_model,
    vlm_model: VlmModelOpt = DEFAULTS.vlm_model,
    vlm_server: VlmServerOpt = None,
    source: Annotated[Optional[str], typer.Option(
        "--source", help="Prompt set whose checklists the VLM judge asks (default: the set the run was generated "
                         "from, recorded in RUN/run.json).")] = None,
    workers: ScoreWorkersOpt = DEFAULTS.score_workers,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Score a run: per-prompt records to RUN/scores.jsonl, set metrics to RUN/set_scores.json.

    Weights come from --*-weights/--*-model paths, then $MME3DR_WEIGHTS, then the hub; every missing weight is
    named up front, with how to provide it.
    """
    from mme3dr.scoring import build_metrics, score_run

    quiet_libraries(progress)
    options = _score_options(device, batch_size, clip_model, clip_pretrained, clip_weights, inception_weights,
                             dinov2_model, vlm_model, vlm_server, decode_workers)
    p = _preset(preset)
    from mme3dr.distributed import joined

    with joined() as ranks:  # joined first: each rank's models go to its own GPU
        built = build_metrics(metrics.split(","), p, reference, options)  # before the run folder is touched
        with _locked(run, ranks):
            summary = score_run(run, metrics.split(","), p, reference, options, progress and ranks.main, built,
                                source, workers=workers, ranks=ranks)
    if not ranks.main:
        return
    for line in summary.lines():
        err.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
@friendly_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `mme3dr models`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder (re-running resumes; finished work is skipped).")],
    model_arg: Annotated[Optional[list[str]], typer.Option("--model-arg", "-a", help="key=value for the model.")] = None,
    metrics: MetricsOpt = ",".join(DEFAULTS.metrics),
    reference: ReferenceOpt = None,
    category: CategoryOpt = None, limit: LimitOpt = None, source: SourceOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed given to the generator.")] = DEFAULTS.seed,
    preset: PresetOpt = DEFAULTS.preset,
    resolution: Annotated[Optional[int], typer.Option(min=8, help="Override the preset's resolution.")] = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    decode_workers: DecodeOpt = DEFAULTS.decode_workers,
    clip_model: ClipModelOpt = DEFAULTS.clip_model,
    clip_pretrained: ClipTagOpt = DEFAULTS.clip_pretrained,
    clip_weights: ClipWeightsOpt = None,
    inception_weights: InceptionOpt = None,
    dinov2_model: Dinov2Opt = DEFAULTS.dinov2_model,
    vlm_model: VlmModelOpt = DEFAULTS.vlm_model,
    vlm_server: VlmServerOpt = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", "-j", min=1, help=f"Processes for rendering and for the CPU-only metrics (geometry); default: "
                                       f"{DEFAULTS.render_workers} for rendering, {DEFAULTS.score_workers} for "
                                       f"geometry.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Generate prompts that failed in an earlier call again.")] = False,
    report: Annotated[bool, typer.Option(help="Write RUN/report/ at the end.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate, render, score and report in one resumable command (a lock keeps other writers out).

    The model, its arguments, the reference set and every weight are checked before the run folder is created.
    """
    from mme3dr.adapters import parse_model_args
    from mme3dr.evaluate import evaluate as run_evaluate

    quiet_libraries(progress)
    options = _score_options(device, batch_size, clip_model, clip_pretrained, clip_weights, inception_weights,
                             dinov2_model, vlm_model, vlm_server, decode_workers)
    from mme3dr.distributed import joined

    with joined() as ranks:
        summary = run_evaluate(model, out_dir, parse_model_args(model_arg or []), metrics.split(","), reference,
                               category, limit, seed, _preset(preset, resolution=resolution), options, source,
                               workers or DEFAULTS.render_workers, report, progress and ranks.main, retry_failed,
                               score_workers=workers or DEFAULTS.score_workers, ranks=ranks)
    if not ranks.main:
        return
    for line in summary.lines():
        err.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("report")
@friendly_errors
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (one row each).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    name: Annotated[Optional[list[str]], typer.Option(
        "--name", help="Row label for each run, in order (repeatable; default: the run's model name).")] = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "MME-3DR report",
    plots: Annotated[bool, typer.Option(help="Draw the plots (PNG and SVG).")] = True,
) -> None:
    """Leaderboard of runs: CSV, Markdown, JSON, a self-contained HTML page and plots."""
    from mme3dr.report import build_report

    files = build_report(runs, out_dir, title, plots, names=name)
    sys.stdout.write(files.markdown.read_text())
    err.print(f"wrote {files.csv}, {files.markdown}, {files.json}, {files.html} and {len(files.plots)} plot files",
              markup=False)


@app.command()
@friendly_errors
def paper(
    run: Annotated[Optional[list[Path]], typer.Option("--run", help="A run to put beside Table 4 (repeatable; "
                                                      "with one run the differences are shown).")] = None,
    table: Annotated[str, typer.Option(help="Published table: 4 (main), 1, 2, 5 or 6.")] = "4",
    name: Annotated[Optional[list[str]], typer.Option(help="Row label for each --run (default: its model).")] = None,
    benchmark: Annotated[Optional[str], typer.Option(help="Only these Table 4 rows: MME-3DR or Toys4K-800.")] = None,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table.")] = False,
) -> None:
    """Print the published MME-3DR tables (arXiv 2512.10949), optionally with runs' numbers beside Table 4."""
    import pandas as pd

    from mme3dr.report.paper import markdown_table, published, run_notes, table4_with_runs

    if run and table != "4":
        raise InputError("--run compares with Table 4 only")
    df = table4_with_runs(run, name, benchmark) if table == "4" else published(table)
    for r in run or []:
        for note in run_notes(r):
            err.print(f"note: {note}", markup=False, highlight=False)
    if markdown:
        sys.stdout.write(markdown_table(df) + "\n")
        return
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        out.print(df.to_string(index=False, na_rep=""), markup=False, highlight=False, soft_wrap=True)
    out.print("Published numbers from arXiv 2512.10949 (KD x100; CLIP = cosine x100). The toolkit's prompt set is "
              "its own, so a run's numbers are not directly comparable with the MME-3DR rows. A run's KD and FD here "
              "are paper-style (views pooled as independent samples; FID on all views); rank runs with the "
              "object-aware KID and fixed-count FID of `mme3dr report`.", markup=False)


references_app = typer.Typer(help="Reference render sets for Kernel/Frechet distances.", no_args_is_help=True)
app.add_typer(references_app, name="references")


@references_app.command("build")
@friendly_errors
def references_build(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Reference folder (REF).")],
    meshes: Annotated[Optional[Path], typer.Option(help="Folder of reference meshes (<category>/<mesh> or flat).")] = None,
    toys4k: Annotated[Optional[Path], typer.Option(help="Toys4K folder of meshes (<class>/<object>/<mesh>).")] = None,
    toys4k_csv: Annotated[Optional[Path], typer.Option(help="TRELLIS-500K's Toys4k.csv.")] = None,
    category_map: Annotated[Optional[Path], typer.Option(
        help="Reference object -> MME-3DR category: CSV with columns object,category, or a JSON object; keys are "
             "object ids (Toys4K sha256), source paths or classes. Per-category KID/FID then compare against "
             "the objects of that category.")] = None,
    preset: PresetOpt = DEFAULTS.preset,
    up_axis: Annotated[str, typer.Option(help="Up axis of the reference meshes (Toys4K: +z).")] = DEFAULTS.up_axis,
    workers: WorkersOpt = DEFAULTS.render_workers, backend: BackendOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Render reference meshes with a preset into REF/<preset>-<hash>/ and record them in reference.json."""
    from mme3dr.render.references import build_references, category_counts

    from mme3dr.runlock import run_lock

    p = _preset(preset)
    with run_lock(out_dir):  # one writer; what a killed build left half-written is removed first
        summary = build_references(out_dir, p, meshes, toys4k, toys4k_csv, up_axis, workers, backend, progress,
                                   category_map)
    for line in [*summary.lines(), category_counts(out_dir / p.tag)]:
        err.print(line, highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":
    app()
