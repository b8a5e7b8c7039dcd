"""The names of the files and folders inside a run folder: the one place that spells them.

A run folder (``--out RUN``) holds, stage by stage (each stage reads only what the earlier ones wrote)::

    RUN/
      run.json              RUN_INFO       provenance of every command run here (mme3dr.runinfo)
      .mme3dr.lock          LOCK           one writer at a time (mme3dr.runlock)
      .mme3dr-children/     CHILDREN_DIR   records of running generator processes (mme3dr.processes)
      generations.jsonl     GENERATIONS    one row per prompt (mme3dr.generation)
      assets/<prompt_id>/   ASSETS_DIR     the generated files
      validation.jsonl      VALIDATION     one row per asset (mme3dr.validation)
      renders/<tag>/        RENDERS_DIR    one folder per render preset (mme3dr.render.runs), holding
        renders.jsonl       RENDER_INDEX     one row per rendered prompt
        <prompt_id>/        transforms.json (TRANSFORMS), render.json (RENDER_RECORD) and contact_sheet.png
                              (CONTACT_SHEET) beside the views
        features/           FEATURES_DIR     cached image features (mme3dr.metrics.features)
      scores.jsonl          SCORES         one row per (prompt, metric) (mme3dr.score_records)
      set_scores.json       SET_SCORES     set metrics: KID, FID (mme3dr.score_records)
      report/               REPORT_DIR     the report of `mme3dr evaluate`

User-facing defaults (seed, preset, metrics, ...) live in :mod:`mme3dr.defaults`; these names are not options.
"""

from __future__ import annotations

RUN_INFO = "run.json"
LOCK = ".mme3dr.lock"
CHILDREN_DIR = ".mme3dr-children"
GENERATIONS = "generations.jsonl"
ASSETS_DIR = "assets"
VALIDATION = "validation.jsonl"
RENDERS_DIR = "renders"
RENDER_INDEX = "renders.jsonl"
TRANSFORMS = "transforms.json"
RENDER_RECORD = "render.json"
CONTACT_SHEET = "contact_sheet.png"
FEATURES_DIR = "features"
SCORES = "scores.jsonl"
SET_SCORES = "set_scores.json"
REPORT_DIR = "report"
