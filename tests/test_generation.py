import json

import pytest
import trimesh

from mme3dr.adapters import GenerationResult, Generator, ModelSpec
from mme3dr.data import load_benchmark
from mme3dr.generation import RunConflictError, generate_run, read_generations
from mme3dr.validation import validate_run


class Counting(Generator):
    """Writes a box per prompt; fails for ids in ``fail``; counts calls."""

    def __init__(self, fail=(), crash_batch_with=None, batch_size=1):
        self.fail, self.crash_batch_with, self.batch_size, self.calls = set(fail), crash_batch_with, batch_size, []

    def generate(self, requests):
        self.calls += [r.prompt_id for r in requests]
        if self.crash_batch_with and any(r.prompt_id == self.crash_batch_with for r in requests):
            raise MemoryError("CUDA out of memory")
        return super().generate(requests)

    def generate_one(self, request):
        if request.prompt_id in self.fail:
            raise RuntimeError("bad prompt")
        path = request.output_dir / "a.glb"
        trimesh.creation.box().export(path)
        return path


@pytest.fixture
def prompts():
    return load_benchmark(limit=6)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, prompts):
    bad = prompts[1].id
    summary = generate_run(Counting(fail={bad}), prompts, tmp_path, progress=False)
    assert (summary.generated, summary.failed, summary.skipped) == (5, 1, 0)
    recs = read_generations(tmp_path)
    assert list(recs) == [p.id for p in prompts]
    assert recs[bad].error == "RuntimeError: bad prompt" and recs[bad].asset_path is None
    ok = recs[prompts[0].id]
    assert ok.asset_path == f"assets/{prompts[0].id}/a.glb" and ok.model["name"].endswith("Counting")
    assert ok.prompt == prompts[0].prompt and ok.category == prompts[0].category and ok.seed == 0


def test_a_crashing_batch_fails_only_that_batch(tmp_path, prompts):
    gen = Counting(crash_batch_with=prompts[2].id, batch_size=2)
    summary = generate_run(gen, prompts, tmp_path, progress=False)
    recs = read_generations(tmp_path)
    failed = {pid for pid, r in recs.items() if not r.ok}
    assert failed == {prompts[2].id, prompts[3].id}  # the batch [2, 3]
    assert "generator crashed: MemoryError: CUDA out of memory" in recs[prompts[3].id].error
    assert summary.generated == 4


def test_rerun_skips_done_and_retries_failed_on_request(tmp_path, prompts):
    spec = ModelSpec("counting", {"k": 1})
    generate_run(Counting(fail={prompts[0].id}), prompts, tmp_path, model_spec=spec, progress=False)
    again = Counting()
    summary = generate_run(again, prompts, tmp_path, model_spec=spec, progress=False)
    assert again.calls == [] and summary.skipped == 6  # a finished run does no work
    summary = generate_run(again, prompts, tmp_path, model_spec=spec, progress=False, retry_failed=True)
    assert again.calls == [prompts[0].id] and summary.skipped == 5 and summary.generated == 1
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 6  # compacted: one record per prompt
    assert all(r.ok for r in read_generations(tmp_path).values())
    with pytest.raises(RunConflictError, match="Use another --out"):
        generate_run(Counting(), prompts, tmp_path, model_spec=ModelSpec("counting", {"k": 2}), progress=False)
    with pytest.raises(RunConflictError, match="with seed 0.*with seed 1"):
        generate_run(Counting(), prompts, tmp_path, model_spec=spec, seed=1, progress=False)


def test_nothing_is_lost_when_the_process_dies_mid_run(tmp_path, prompts):
    class Dies(Counting):
        def generate_one(self, request):
            if request.prompt_id == prompts[3].id:
                raise KeyboardInterrupt  # not an Exception: escapes like a kill would
            return super().generate_one(request)

    spec = ModelSpec("same-model")
    with pytest.raises(KeyboardInterrupt):
        generate_run(Dies(), prompts, tmp_path, model_spec=spec, progress=False)
    assert len(read_generations(tmp_path)) == 3  # the first three were already on disk
    with open(tmp_path / "generations.jsonl", "a") as f:
        f.write('{"prompt_id": "torn')  # a write cut by the crash
    with pytest.warns(UserWarning, match="torn last line"):
        gen = Counting()
        generate_run(gen, prompts, tmp_path, model_spec=spec, progress=False)
    assert gen.calls == [p.id for p in prompts[3:]]


def test_missing_returned_file_is_an_error(tmp_path, prompts):
    class Liar(Generator):
        def generate_one(self, request):
            return GenerationResult(request.prompt_id, asset_path=request.output_dir / "never.glb")

    generate_run(Liar(), prompts[:1], tmp_path, progress=False)
    assert "not a file" in read_generations(tmp_path)[prompts[0].id].error


def test_validate_run_reports_and_writes(tmp_path, prompts):
    generate_run(Counting(fail={prompts[0].id}), prompts, tmp_path, progress=False)
    (tmp_path / f"assets/{prompts[1].id}/a.glb").write_bytes(b"broken")
    reports = {r.prompt_id: r for r in validate_run(tmp_path, progress=False)}
    assert reports[prompts[0].id].reason == "generation_failed"
    assert reports[prompts[1].id].reason == "unreadable"
    assert reports[prompts[2].id].ok and reports[prompts[2].id].n_faces == 12
    rows = [json.loads(l) for l in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(r["ok"] for r in rows) == 4
    with pytest.raises(FileNotFoundError, match="run `mme3dr generate"):
        validate_run(tmp_path / "empty", progress=False)
