"""The one source of defaults: the CLI and the Python API both read these values.

Change a default here and every entry point follows; nothing else in the package hard-codes them. The names of
the files inside a run folder are not options: they live in :mod:`mme3dr.runfiles`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


def _usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Defaults:
    #: Seed passed to every generator request unless the user gives one.
    seed: int = 0
    #: Wall-clock limit for one prompt of the ``command`` adapter (seconds).
    command_timeout_s: float = 600.0
    #: File extension the ``command`` adapter asks the program to write (``{output}``).
    command_output_ext: str = "glb"
    #: Up axis assumed for assets whose adapter does not declare one, for `mme3dr render ASSET` and for reference
    #: meshes (Toys4K and our cameras are z-up). The folder and command adapters take it as their default too.
    up_axis: str = "+z"
    #: After normalisation the asset's bounding box is centred and its largest extent is ``2 * half_extent``.
    normalised_half_extent: float = 0.5
    #: Validation: a mesh whose largest extent is below this is degenerate (reason ``absurd_size``).
    min_extent: float = 1e-6
    #: Validation: a mesh whose largest extent is above this (in file units) is absurd (reason ``absurd_size``).
    max_extent: float = 1e5
    #: Validation: more faces than this is refused (reason ``too_many_faces``); renders would take minutes.
    max_faces: int = 10_000_000
    #: Validation: a face whose area is at most ``degenerate_area * L**2`` (L = the mesh's largest extent, so
    #: ``degenerate_area`` in normalised units) is a zero-area face: dropped at load (and counted); a mesh with no
    #: other face is refused (reason ``degenerate``). The geometry metric's ``degenerate_faces`` uses the same bound.
    degenerate_area: float = 1e-10
    #: Loading budget (one asset, in the loader process; :mod:`mme3dr.asset_worker`): wall-clock seconds (reason
    #: ``timeout``) and memory the loader may take beyond its start-up size, as an address-space limit in MiB
    #: (reason ``too_large``). A 10-million-face GLB loads in about 1.5 GiB.
    asset_timeout_s: float = 120.0
    asset_memory_mb: int = 3072
    #: Loading budget, checked before parsing (reason ``too_large``): the largest asset file and companion file
    #: (.bin, .mtl, texture) in MiB, and the most pixels of one texture (a decompression bomb declares billions).
    max_file_mb: int = 1024
    max_texture_pixels: int = 8192 * 8192
    #: Environment variable naming a folder of model weights (see mme3dr.weights).
    weights_env: str = "MME3DR_WEIGHTS"
    #: Render preset of `render`, `score`, `evaluate` and `references build` when none is named.
    preset: str = "canonical"
    #: Metrics of `mme3dr score` / `evaluate` when none are named. `geometry` needs no weights; `clip` needs the CLIP
    #: weights (a missing weight stops the command up front, naming every missing one and how to provide it).
    metrics: tuple[str, ...] = ("clip", "geometry")
    #: CLIP backbone of the released evaluation code: OpenAI ViT-B/32.
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    #: DINOv2 backbone of the kid_dinov2 / fid_dinov2 / ar3d_compat_kd metrics (hub id or local folder).
    dinov2_model: str = "facebook/dinov2-base"
    #: Worker processes of the CPU-only per-prompt metrics (``geometry``) in `mme3dr score` / `evaluate` (``-j``)
    #: and :func:`mme3dr.scoring.score_run`: half the usable CPU cores, at most 8, at least 1 (1 scores in the
    #: calling process, with no pool). Each worker imports the package and starts its own asset-loading process
    #: (with the loading budget above) in a few seconds; on the 2-core CPU machine two workers were slower than one
    #: (benchmarks/results/eval_cpu*.json), so the default there is 1.
    score_workers: int = max(1, min(_usable_cpus() // 2, 8))
    #: Rendering processes of `mme3dr render`, `references build` and `evaluate` (``-j``) and their Python
    #: functions: half the usable CPU cores, at most 8, at least 1. On a GPU the processes are CPU-bound (scene
    #: set-up, read-back, PNG encoding in each process's threads): on the H200 (16 cores) 249 prompts took 90 s in
    #: one process (issue 14's measurement) and 14.9 s with 8 (benchmarks/results/eval_h200.json); 12 and 16 were
    #: no faster. On a CPU, Mesa's llvmpipe already rasterises on every core; a second process on the 2-core machine
    #: rendered 20-30% more views a second (benchmarks/results/render_cpu.json). The default there stays 1, as for
    #: geometry, so a small run does not wait for a pool of processes to start.
    render_workers: int = max(1, min(_usable_cpus() // 2, 8))
    #: Images per forward pass of the image models (CLIP, Inception, DINOv2) on the CPU and on a GPU; a batch spans
    #: prompts (does not change any score). On the H200, 128 ran the three models 12-30% faster than 32
    #: (benchmarks/results/eval_h200_batch{32,128}.json, ``image_pass_parts``); on the CPU a smaller batch keeps
    #: memory low.
    batch_size: int = 32
    gpu_batch_size: int = 128
    #: Workers that decode rendered views (PNG decode, composite on white, resize) for the image metrics (0: the
    #: calling thread): processes when the models run on a GPU, threads on the CPU (see mme3dr.metrics.views); the
    #: usable cores, at most 16. ``decode_prefetch``: how many prompts' views each worker process may decode ahead
    #: of the models (bounded, so memory does not grow with the prompts).
    decode_workers: int = max(1, min(_usable_cpus(), 16))
    decode_prefetch: int = 2
    #: VLM judge: model id (or local path), how many views go into one query, and the elevation of the target
    #: directions (evenly spaced in azimuth) that choose those views among the rendered ones.
    vlm_model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    vlm_views: int = 6
    vlm_view_elevation_deg: float = 20.0
    vlm_max_new_tokens: int = 256
    #: VLM judge in-process (transformers): queries per batch, left-padded; the scoring stage hands the judge
    #: ceil(vlm_batch_size / 4) prompts at a time (four judgments each). Does not change any score (greedy
    #: decoding; in bf16 on a GPU a near-tie can rarely break the other way in another batch).
    vlm_batch_size: int = 32
    #: OpenAI-compatible VLM server: seconds per request and attempts per query.
    vlm_timeout_s: float = 120.0
    vlm_retries: int = 3
    #: OpenAI-compatible VLM server: requests in flight at once (a thread pool); the scoring stage hands the judge
    #: ceil(vlm_concurrency / 4) prompts at a time.
    vlm_concurrency: int = 16
    #: Environment variable holding the API key of the OpenAI-compatible VLM server (read when none is passed).
    vlm_api_key_env: str = "MME3DR_VLM_API_KEY"
    #: Main (object-aware) KID: bootstrap replicates over objects, seed (torch-fidelity's 2020, also used for the
    #: pooled KID's subsets and the FID draws), and the most objects per set (a larger set is subsampled by object).
    kid_bootstrap: int = 1000
    kid_seed: int = 2020
    kid_max_objects: int = 1000
    #: torch.distributed (``torchrun``): how long a rank waits for the others (rank 0 generates alone).
    dist_timeout_minutes: float = 24 * 60.0
    #: Pooled (paper-style) KID: subsets and the largest subset size in views (torch-fidelity's defaults).
    kid_pooled_subsets: int = 100
    kid_pooled_max_subset: int = 1000
    #: Headline FID: generated objects per draw (38 = World-Knowledge, the smallest MME-3DR category, so overall
    #: and per-category values are computed at the same count) and the number of random draws averaged.
    fid_objects: int = 38
    fid_draws: int = 10
    #: Reports: bootstrap replicates over prompts for intervals (also the paired differences) and their seed.
    report_bootstrap: int = 1000
    report_seed: int = 0


DEFAULTS = Defaults()


#: The fixed worst value of every ranked per-prompt value, in one table. Reports count a prompt without a value
#: (failed generation, render or metric) as this value in ``micro_worst`` and ``macro``, so a run's numbers never
#: depend on which other runs share the report. ``None``: an unbounded count with no natural worst value; its
#: failures cannot be penalised, so ``micro_worst`` is left empty and ``macro`` needs a value in every category.
#: A metric that adds a ranked value must add it here (tests/test_report_aggregation.py checks every registered
#: metric).
WORST_VALUES: Mapping[str, float | None] = MappingProxyType({
    # CLIP score, 100 x cosine: 0 = no agreement with the prompt (renders of real objects score about 15-35).
    "clip": 0.0,
    "clip_worst": 0.0,
    # ar3d-r1-compat: the raw CLIP cosine, and the DINOv2 RBF similarity in (0, 1] (eval.py sets NaN to 0).
    "ar3d_compat_clip": 0.0,
    "ar3d_compat_kd": 0.0,
    # VLM judge: the bottom of each scale (consistency and appearance 0-3, category 0/1, checklist accuracy 0-1).
    "vlm_consistency": 0.0,
    "vlm_category": 0.0,
    "vlm_appearance": 0.0,
    "vlm_checklist": 0.0,
    # Share of the item's judge queries that failed (unparsed, or a copy of the template): all of them.
    "vlm_unparsed": 1.0,
    # Geometry (normalised units: the largest extent is 1).
    "watertight": 0.0,
    "stable": 0.0,
    "degenerate_faces": 1.0,
    # The projected centre of mass and the support both lie in the unit square of the bounding box: margin >= -sqrt 2.
    "stability_margin": -math.sqrt(2.0),
    # Share of the surface area in parts not connected to the ground: all of it.
    "floating_area": 1.0,
    # An unbounded count: no fixed worst, so failures of this value are not penalised (reports say so).
    "components": None,
})
