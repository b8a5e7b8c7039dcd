"""Seeds and ablations of Hi-GRPO run side by side on the GPUs of one machine, then evaluated and tabulated.

    python -m reference_policy.rl.experiments calibrate --out DIR [--device cuda:0] [--lrs 1e-6 3e-6 1e-5]
        [--minutes 2.5] [--budget-minutes 12] [--concurrency 27] [--devices-total 2]
    python -m reference_policy.rl.experiments run --out DIR [--devices cuda:0,cuda:1] [--group main|ablations|all]
        [--seeds 0 1 2] [--steps N | --from-calibration] [--ablation-steps M] [--max-minutes T] [--wait-minutes W]
    python -m reference_policy.rl.experiments evaluate --out DIR [--devices ...] [--n 256] [--parallel K]
    python -m reference_policy.rl.experiments table --out DIR

``calibrate`` chooses the learning rate and the step budget before the real runs, by a rule fixed in advance: it
trains the main setting once per candidate learning rate (seeds 100, 101, ..., not the seeds of the real runs),
all at once on one device for ``--minutes``, then takes the rate with the highest mean step-2 reward over the last
third of its steps among those whose mean KL there stays below :data:`KL_LIMIT`, and the number of steps that fits
``--budget-minutes`` when ``--concurrency`` runs share ``--devices-total`` devices (the measured seconds per step
scaled by the ratio of runs per device, a conservative bound when a device is the bottleneck). It writes
``DIR/calibration.json``; ``run --from-calibration`` uses both numbers.

``run`` starts one ``python -m reference_policy.rl.train`` process per (setting, seed) in ``DIR/runs/<setting>-s<seed>``
(each in a session of its own, so it outlives the launching command; the GPUs are shared round-robin), then waits
up to ``--wait-minutes`` for them. Every command is idempotent: a finished run (``summary.json``) is skipped, a
run whose process is gone resumes from its ``state.pt``, a run still running is waited for, never started twice.
``evaluate`` runs :func:`reference_policy.evaluate.evaluate_split` (the model card's sampling settings) on each
finished run and once on the starting (SFT) checkpoint, into ``eval.json`` beside each. ``table`` writes
``DIR/results.json`` and ``DIR/results.md``: SFT versus Hi-GRPO as mean +- std over seeds, and the ablation table
beside the direction the paper reports (arXiv 2512.10949, tables 2, 5 and 6; ``../shared/paper``).

Every setting trains for the same number of steps (``--steps`` for the main setting, ``--ablation-steps`` for the
ablations and for the main setting's seeds that the ablation table compares against); ``--max-minutes`` is a
safety stop, and ``summary.json`` records how many steps a run took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The main setting's name; ablations change one option of it.
MAIN = "hi-grpo"


@dataclass(frozen=True)
class Setting:
    """One configuration: ``overrides`` of :class:`~reference_policy.rl.config.HiGRPOConfig` (as CLI options) and
    what the paper reports for the same change."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    paper: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting(MAIN, {}, "the paper's method: token-mean, dynamic sampling, KL 0.01, decoupled clip, lambda 1"),
    Setting("seq-mean-token-mean", {"loss-agg-mode": "seq-mean-token-mean"},
            "Table 2: token-level averaging beats sequence-level (+0.5 CLIP: 25.8 -> 26.3)"),
    Setting("no-dynamic-sampling", {"dynamic-sampling": "false"},
            "Table 2: dynamic sampling helps (+0.6 CLIP: 25.2 -> 25.8)"),
    Setting("beta-0", {"beta": "0"}, "Table 2: removing the KL term hurts (-0.4 CLIP: 26.3 -> 25.9)"),
    Setting("symmetric-clip", {"epsilon-high": "0.2"},
            "Table 2: decoupled clipping helps a little (+0.2 CLIP: 26.3 -> 26.5)"),
    Setting("gspo", {"importance-sampling-level": "sequence"},
            "Table 2: a sequence-level ratio (GSPO) is slightly worse than token-level (-0.3 CLIP: 25.8 -> 25.5)"),
    Setting("no-step1-reward", {"step1-reward": "false"},
            "Table 5: step-1 rewards add about +2 CLIP (25.7 -> 27.8)"),
    Setting("lambda-0", {"coupling-lambda": "0"},
            "not ablated in the paper's tables (it couples the steps with lambda = 1)"),
    Setting("one-step", {"paradigm": "one-step"},
            "Table 6: two steps beat one (Hi-GRPO 28.7 vs GRPO + textual reasoning 25.2 CLIP)"),
)
BY_NAME = {s.name: s for s in SETTINGS}


def run_dir(out: Path, setting: str, seed: int) -> Path:
    return out / "runs" / f"{setting}-s{seed}"


def _alive(folder: Path) -> bool:
    """True while the process recorded in ``folder/pid`` runs (its command line names ``folder``)."""
    try:
        pid = int((folder / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return str(folder) in cmdline


def launch(out: Path, setting: Setting, seed: int, steps: int, device: str, max_minutes: float | None,
           init: str | None, extra: dict[str, str]) -> str:
    """Start (or resume) one training run unless it is finished or running; returns what it did."""
    folder = run_dir(out, setting.name, seed)
    if (folder / "summary.json").exists():
        return "finished"
    if _alive(folder):
        return "running"
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "reference_policy.rl.train", "--out", str(folder), "--device", device,
            "--seed", str(seed), "--steps", str(steps)]
    if max_minutes:
        argv += ["--max-minutes", str(max_minutes)]
    if init:
        argv += ["--init", init]
    for key, value in {**setting.overrides, **extra}.items():
        argv += [f"--{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(folder / "train.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    (folder / "pid").write_text(str(proc.pid))
    (folder / "command.json").write_text(json.dumps(argv))
    return "started"


def wait(folders: list[Path], minutes: float) -> list[Path]:
    """Wait until every run in ``folders`` is finished or gone, at most ``minutes``; returns the unfinished."""
    deadline = time.time() + 60 * minutes
    while True:
        left = [f for f in folders if not (f / "summary.json").exists() and _alive(f)]
        if not left or time.time() > deadline:
            return [f for f in folders if not (f / "summary.json").exists()]
        time.sleep(5)


def plan(group: str, seeds: list[int], steps: int, ablation_steps: int) -> list[tuple[Setting, int, int]]:
    """(setting, seed, steps) of every run of ``group``: ``main`` is the main setting at ``steps``; ``ablations``
    every setting (the main one included, as the ablations' reference) at ``ablation_steps``, in folders of their
    own (``<setting>@<steps>``) when the two budgets differ."""
    runs = []
    if group in ("main", "all"):
        runs += [(BY_NAME[MAIN], s, steps) for s in seeds]
    if group in ("ablations", "all"):
        for setting in SETTINGS:
            if setting.name == MAIN and ablation_steps == steps and group == "all":
                continue
            named = setting if ablation_steps == steps else Setting(f"{setting.name}@{ablation_steps}",
                                                                    setting.overrides, setting.paper)
            runs += [(named, s, ablation_steps) for s in seeds]
    return runs


def evaluate_folder(checkpoint: Path, target: Path, device: str, n: int) -> None:
    """``reference_policy.evaluate`` of ``checkpoint`` on both splits into ``target`` (a subprocess per call)."""
    argv = [sys.executable, "-m", "reference_policy.evaluate", "--checkpoint", str(checkpoint), "--device", device,
            "--n", str(n), "--batch-size", str(min(n, 256)), "--out", str(target)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


#: Calibration rejects a learning rate whose mean k3 KL to the starting policy, over the last third of its steps,
#: exceeds this.
KL_LIMIT = 0.05


def _log_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cmd_calibrate(a: argparse.Namespace) -> None:
    out = Path(a.out).resolve()
    folders = []
    for i, lr in enumerate(a.lrs):
        setting = Setting(f"calibration-lr{lr:g}", {"learning-rate": f"{lr:g}"})
        launch(out, setting, 100 + i, 100_000, a.device, a.minutes, a.init, {})
        folders.append((lr, run_dir(out, setting.name, 100 + i)))
    wait([f for _, f in folders], a.minutes + 2)
    stats = []
    for lr, folder in folders:
        rows = _log_rows(folder)
        tail = rows[len(rows) * 2 // 3:] or rows
        stats.append({"learning_rate": lr, "steps": len(rows),
                      # log rows carry the run's elapsed seconds: per step is their difference
                      "seconds_per_step": float(np.median(np.diff([r["seconds"] for r in rows]))) if len(rows) > 2
                      else None,
                      "r2_first": float(np.mean([r["r2"] for r in rows[:3]])) if rows else None,
                      "r2_last_third": float(np.mean([r["r2"] for r in tail])) if tail else None,
                      "kl_last_third": float(np.mean([r["kl"] for r in tail])) if tail else None})
    ok = [s for s in stats if s["r2_last_third"] is not None and (s["kl_last_third"] or 0) < KL_LIMIT]
    if not ok:
        raise SystemExit(f"no learning rate trained within the KL limit: {stats}")
    best = max(ok, key=lambda s: (round(s["r2_last_third"], 3), -s["learning_rate"]))
    per_step = float(np.median([s["seconds_per_step"] for s in stats if s["seconds_per_step"]]))
    scale = max(1.0, (a.concurrency / a.devices_total) / len(a.lrs))
    steps = int(60 * a.budget_minutes / (per_step * scale))
    result = {"learning_rate": best["learning_rate"], "steps": steps, "seconds_per_step_at_calibration": per_step,
              "runs_per_device_at_calibration": len(a.lrs), "scale": scale, "kl_limit": KL_LIMIT,
              "candidates": stats}
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def cmd_run(a: argparse.Namespace) -> None:
    out, devices = Path(a.out).resolve(), a.devices.split(",")
    extra = dict(kv.split("=", 1) for kv in a.set or [])
    if a.from_calibration:
        cal = json.loads((out / "calibration.json").read_text())
        extra.setdefault("learning-rate", f"{cal['learning_rate']:g}")
        a.steps = a.ablation_steps = cal["steps"]
    runs = plan(a.group, a.seeds, a.steps, a.ablation_steps)
    folders = []
    for i, (setting, seed, steps) in enumerate(runs):
        what = launch(out, setting, seed, steps, devices[i % len(devices)], a.max_minutes, a.init, extra)
        folders.append(run_dir(out, setting.name, seed))
        print(f"{setting.name} seed {seed}: {what}", file=sys.stderr, flush=True)
    left = wait(folders, a.wait_minutes)
    print(json.dumps({"runs": len(folders), "unfinished": [f.name for f in left]}))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from reference_policy.bundled import SFT

    out, devices = Path(a.out).resolve(), a.devices.split(",")
    jobs = [(Path(a.init or SFT), out / "sft_eval.json")]
    jobs += [(f, f / "eval.json") for f in sorted((out / "runs").glob("*"))
             if (f / "summary.json").exists() and not f.name.startswith("calibration-")]
    jobs = [(c, t) for c, t in jobs if not t.exists()]
    with ThreadPoolExecutor(a.parallel) as pool:
        list(pool.map(lambda ij: evaluate_folder(ij[1][0], ij[1][1], devices[ij[0] % len(devices)], a.n),
                      enumerate(jobs)))
    print(json.dumps({"evaluated": [str(t) for _, t in jobs]}))


#: What the tables report from an evaluation: (split, grid, key).
METRICS = (("train", "final", "all"), ("train", "final", "score"), ("train", "final", "count"),
           ("train", "final", "colour"), ("train", "final", "relation"), ("train", "final", "stability"),
           ("heldout", "final", "all"), ("heldout", "final", "score"), ("train", "final", "empty"),
           ("heldout", "final", "empty"))


def _metrics(ev: dict[str, Any]) -> dict[str, float]:
    return {f"{split}/{key}": float(ev[split][grid][key]) for split, grid, key in METRICS
            if split in ev and key in ev[split][grid]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(out: Path) -> dict[str, Any]:
    """Per setting: seeds, steps, final rewards and evaluation metrics (mean, std over seeds)."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted((out / "runs").glob("*-s*")):
        if folder.name.startswith("calibration-") or not ((folder / "summary.json").exists() and (folder / "eval.json").exists()):
            continue
        setting, _, seed = folder.name.rpartition("-s")
        summary = json.loads((folder / "summary.json").read_text())
        ev = json.loads((folder / "eval.json").read_text())
        by_setting.setdefault(setting, []).append({"seed": int(seed), "steps": summary.get("steps"),
                                                   "seconds": summary.get("seconds"), **_metrics(ev),
                                                   **{f"reward/{k}": v for k, v in summary.get("final", {}).items()}})
    table = {}
    for setting, rows in by_setting.items():
        keys = sorted({k for r in rows for k in r if k not in ("seed",)})
        table[setting] = {"seeds": [r["seed"] for r in rows],
                          **{k: _mean_std([r[k] for r in rows if r.get(k) is not None]) for k in keys
                             if any(r.get(k) is not None for r in rows)}}
    sft = out / "sft_eval.json"
    return {"sft": _metrics(json.loads(sft.read_text())) if sft.exists() else None, "settings": table}


def _fmt(ms: tuple[float, float] | None) -> str:
    return "" if ms is None else f"{ms[0]:.3f} +- {ms[1]:.3f}"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    sft, settings = results["sft"], results["settings"]
    main = settings.get(MAIN)
    if main:
        lines += [f"### SFT versus Hi-GRPO ({len(main['seeds'])} RL seeds: mean +- std)\n",
                  "| metric | SFT | Hi-GRPO | gain |", "|---|---|---|---|"]
        for split, _, key in METRICS:
            k = f"{split}/{key}"
            if k in main:
                base = (sft or {}).get(k)
                gain = "" if base is None else f"{main[k][0] - base:+.3f}"
                lines.append(f"| {k} | {'' if base is None else f'{base:.3f}'} | {_fmt(main[k])} | {gain} |")
        lines.append("")
    ablations = [s for s in SETTINGS if any(n.split("@")[0] == s.name for n in settings)]
    if ablations:
        lines += ["### Ablations (mean +- std over seeds, same steps per setting)\n",
                  "| setting | seeds | train all-checks | train score | heldout all-checks | final reward r2 | "
                  "paper (Toys4K) |", "|---|---|---|---|---|---|---|"]
        for s in ablations:
            for name in sorted(n for n in settings if n.split("@")[0] == s.name):
                r = settings[name]
                lines.append(f"| {name} | {len(r['seeds'])} | {_fmt(r.get('train/all'))} | {_fmt(r.get('train/score'))} "
                             f"| {_fmt(r.get('heldout/all'))} | {_fmt(r.get('reward/r2'))} | {s.paper} |")
    return "\n".join(lines) + "\n"


def cmd_table(a: argparse.Namespace) -> None:
    out = Path(a.out)
    results = collect(out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="choose the learning rate and the steps (see the module docstring)")
    c.add_argument("--out", required=True)
    c.add_argument("--device", default="cuda:0")
    c.add_argument("--lrs", type=float, nargs="+", default=[1e-6, 3e-6, 1e-5, 3e-5])
    c.add_argument("--minutes", type=float, default=2.5)
    c.add_argument("--budget-minutes", type=float, default=12.0, help="wall clock the real runs may take")
    c.add_argument("--concurrency", type=int, default=27, help="runs that will share the devices")
    c.add_argument("--devices-total", type=int, default=2)
    c.add_argument("--init", help="starting checkpoint (default: the bundled SFT one)")
    r = sub.add_parser("run", help="start or resume the runs, then wait for them")
    r.add_argument("--out", required=True)
    r.add_argument("--devices", default="cuda:0", help="comma-separated torch devices, used round-robin")
    r.add_argument("--group", choices=("main", "ablations", "all"), default="all")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--steps", type=int, default=200, help="steps of the main setting")
    r.add_argument("--from-calibration", action="store_true",
                   help="learning rate and steps (of every setting) from DIR/calibration.json")
    r.add_argument("--ablation-steps", type=int, default=100, help="steps of every ablation setting")
    r.add_argument("--max-minutes", type=float, help="safety stop of each run (wall clock)")
    r.add_argument("--wait-minutes", type=float, default=9.0, help="how long this command waits for the runs")
    r.add_argument("--init", help="starting checkpoint (default: the bundled SFT one)")
    r.add_argument("--set", nargs="*", metavar="OPTION=VALUE", help="extra train options for every run")
    e = sub.add_parser("evaluate", help="evaluate the finished runs and the starting checkpoint")
    e.add_argument("--out", required=True)
    e.add_argument("--devices", default="cuda:0")
    e.add_argument("--n", type=int, default=256)
    e.add_argument("--parallel", type=int, default=4, help="evaluations at once")
    e.add_argument("--init", help="starting checkpoint (default: the bundled SFT one)")
    t = sub.add_parser("table", help="write results.json and results.md")
    t.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    {"calibrate": cmd_calibrate, "run": cmd_run, "evaluate": cmd_evaluate, "table": cmd_table}[a.command](a)


if __name__ == "__main__":
    main()
