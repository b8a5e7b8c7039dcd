"""``mme3dr validate``: check every asset of a run and record the problems."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from mme3dr import runfiles
from mme3dr.assets import AssetReport, check_asset
from mme3dr.errors import MissingInputError
from mme3dr.generation import read_generations
from mme3dr.jsonl import write_jsonl


def validate_run(run_dir: Path | str, progress: bool = True) -> list[AssetReport]:
    """One :class:`AssetReport` per prompt of the run, also written to ``RUN/validation.jsonl``.

    A failed generation is reported with reason ``generation_failed``; a bad asset with its
    :data:`mme3dr.assets.REASONS` code.
    """
    run_dir = Path(run_dir)
    records = read_generations(run_dir)
    if not records:
        raise MissingInputError(f"{run_dir / runfiles.GENERATIONS} is missing or empty; "
                                "run `mme3dr generate ... --out RUN` first")
    reports = []
    for rec in tqdm(records.values(), desc="validate", unit="asset", disable=not progress):
        path = rec.resolved_asset(run_dir)
        if not rec.ok or path is None:
            reports.append(AssetReport(rec.prompt_id, None, ok=False, reason="generation_failed", message=rec.error))
        else:
            reports.append(check_asset(rec.prompt_id, path, up_axis=rec.up_axis))
    write_jsonl(run_dir / runfiles.VALIDATION, [r.to_dict() for r in reports])
    return reports
