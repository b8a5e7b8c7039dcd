"""Where the image pass and rendering spend their time on a GPU machine: the profile behind the decoding change.

Renders 249 synthetic prompts (``-j`` 16, 8 and 12), then times decoding alone in 16, 8 and 4 threads
(:func:`mme3dr.metrics.views.stream_views` on the CPU device) and in 8 and 15 DataLoader processes, each full-size
model alone at batch 32, 128 and 256, and each model again while 16 threads decode (the GIL contention that made
the pass slow), import times of the worker modules, and geometry at 1, 8 and 16 workers. Writes ``$OUT/profile.json``
(``N`` prompts, ``DEV`` device and ``S`` sample views from the environment). ``benchmarks/results/
image_pass_profile_h200.json`` was measured at commit c72deaf, whose decoder was a thread pool of one view per task.

    OUT=. python benchmarks/image_pass_profile.py
"""
import json, os, sys, time, tempfile, threading, subprocess
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np, torch
import eval_bench as eb
from mme3dr.defaults import DEFAULTS
from mme3dr.render.presets import get_preset
from mme3dr.metrics.views import stream_views, decode_view

out = {}
def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()
def log(k, v):
    out[k] = v; print(k, v, flush=True)

preset = get_preset(DEFAULTS.preset).with_overrides(resolution=512, n_views=24)
tmp = Path(tempfile.mkdtemp())
bench = eb.synthetic_prompts(int(os.environ.get("N", 249)), tmp / "prompts")
class A: pass
a = A(); a.subdivisions = 4; a.render_prompts = None; a.render_workers = 16
res = {"stages_s": {}, "cpu_s": {}}
run = eb.generate_and_render(a, bench, preset, tmp, res); log("render_j16", res["stages_s"]["render"])
for j in (8, 12):
    a.render_workers = j; r2 = {"stages_s": {}, "cpu_s": {}}
    eb.generate_and_render(a, bench, preset, tmp / f"j{j}", r2); log(f"render_j{j}", r2["stages_s"]["render"])
groups = [sorted(d.glob("[0-9][0-9][0-9].png")) for d in sorted((run / "renders").glob("*/*")) if d.is_dir()]
groups = [g for g in groups if g]
nviews = sum(map(len, groups)); log("views", nviews)
for th in (16, 8, 4):
    t = time.perf_counter(); n = 0
    for g in stream_views(groups, (224,), th): n += len(g.views)
    log(f"decode_threads_{th}_views_per_s", round(n / (time.perf_counter() - t), 1))

class DS(torch.utils.data.Dataset):
    def __len__(self): return len(groups)
    def __getitem__(self, i):
        vs = [decode_view(p, (224,)) for p in groups[i]]
        return i, np.stack([rgb for rgb, _ in vs]), np.stack([small[224] for _, small in vs])
for w in (8, 15):
    for pf in (1, 2):
        t = time.perf_counter(); n = 0
        for i, rgb, r in torch.utils.data.DataLoader(DS(), batch_size=None, num_workers=w, prefetch_factor=pf):
            n += len(rgb)
        log(f"decode_dataloader_{w}w_pf{pf}_views_per_s", round(n / (time.perf_counter() - t), 1))

# models
from mme3dr.metrics.specs import ScoreOptions
from mme3dr.scoring import build_metrics
a.tiny_models = False; a.random_weights = True; a.clip_weights = a.inception_weights = a.dinov2_model = None
a.device = os.environ.get("DEV", "cuda"); a.batch_size = 32; a.decode_workers = None; a.ref_objects = 8; a.image_metrics = "clip,kid,fid,kid_dinov2"
opts, _ = eb.image_models(a, tmp / "models")
ref = eb.reference_set(tmp, preset, 10, 8)
t = time.perf_counter(); built = build_metrics(["clip", "kid", "fid", "kid_dinov2"], preset, ref, opts); log("load_models", round(time.perf_counter() - t, 2))
models = {"clip": built.prompt["clip"].clip, **built.extractors}
sample = [v for g in stream_views(groups[:40], (224,), 16) for v in g.views][:int(os.environ.get("S", 768))]
for name, m in models.items():
    for bs in (32, 128, 256):
        m.batch_size = bs
        m.embed(sample[:bs]); sync()
        t = time.perf_counter(); m.embed(sample); sync()
        log(f"{name}_bs{bs}_views_per_s", round(len(sample) / (time.perf_counter() - t), 1))
    m.batch_size = 32
# models while decode threads run (GIL contention)
stop = threading.Event()
def churn():
    while not stop.is_set():
        for g in stream_views(groups, (224,), 16):
            if stop.is_set(): break
th = threading.Thread(target=churn); th.start(); time.sleep(1)
for name, m in models.items():
    t = time.perf_counter(); m.embed(sample); sync()
    log(f"{name}_bs32_with_16_decode_threads_views_per_s", round(len(sample) / (time.perf_counter() - t), 1))
stop.set(); th.join()
# fp32 matmul settings
log("allow_tf32", [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()])
# spawn import cost
for mod in ("mme3dr.metrics.geometry", "mme3dr.render.jobs", "torch"):
    t = time.perf_counter(); subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)
    log(f"import_{mod}_s", round(time.perf_counter() - t, 2))
t = time.perf_counter(); s = __import__("mme3dr.scoring", fromlist=["x"]).score_run(run, ["geometry"], preset, progress=False, workers=8); log("geometry_w8", round(time.perf_counter() - t, 2))
(run / "scores.jsonl").unlink()
t = time.perf_counter(); s = __import__("mme3dr.scoring", fromlist=["x"]).score_run(run, ["geometry"], preset, progress=False, workers=16); log("geometry_w16", round(time.perf_counter() - t, 2))
(run / "scores.jsonl").unlink()
t = time.perf_counter(); s = __import__("mme3dr.scoring", fromlist=["x"]).score_run(run, ["geometry"], preset, progress=False, workers=1); log("geometry_w1", round(time.perf_counter() - t, 2))
Path(os.environ.get("OUT", "/tmp"), "profile.json").write_text(json.dumps(out, indent=1))
