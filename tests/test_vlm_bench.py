"""benchmarks/vlm_bench.py runs the real judge path end to end (here with --tiny on the CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "vlm_bench.py"


def test_vlm_bench_tiny_runs_the_judge(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vlm_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "vlm.json"
    result = bench.main(["--tiny", "--prompts", "3", "--batch-size", "4", "--max-new-tokens", "4", "--device", "cpu",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["queries"] == 12 and result["errors"] == 0  # 3 prompts x 4 judgments, all answered
    assert result["items_per_call"] == 1 and result["batch_size"] == 4 and result["new_tokens_per_query"] == 4
    # six views of 4 image tokens each (the tiny processor's 56x56 limit), the chat template and the query text
    assert 24 + 100 < result["prompt_tokens_per_query"]["mean"] < 24 + 400
    assert result["wall_s"] > 0 and result["queries_per_s"] > 0
