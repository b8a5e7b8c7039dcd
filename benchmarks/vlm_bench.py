"""VLM judge throughput: the real judge path on N synthetic prompts with a full-size, randomly initialised
Qwen2.5-VL-7B (no download).

The model is built from Qwen2.5-VL-7B-Instruct's real architecture (``benchmarks/qwen25_vl_7b.json``) with random
weights, initialised directly on ``--device`` in ``--dtype``. The processor is local: a ``Qwen2VLImageProcessor``
with the real settings (patch 14, merge 2, min/max pixels), and a byte-level BPE tokenizer trained here on the
judge's own query texts and the bundled prompts (so text token counts are in the range of Qwen's tokenizer),
with Qwen's special tokens and chat template. Each prompt of the bundled set (cycled when ``--prompts`` is larger)
gets six 512x512 views (the ``reward6`` cameras, a shaded disc on a plain background) and its real checklist, and
the judge scores them through :meth:`VLMJudge.score_many` and :meth:`TransformersVLM.generate_many`, handed
``judge.batch_items`` prompts at a time as the scoring stage does.

Random weights rarely emit the end token, so end-of-sequence is switched off and every query generates exactly
``--max-new-tokens`` tokens: the default 64 covers the longest answer the judge asks for (the 7-question
checklist, ``{"q1": "yes", ..., "q7": "yes"}``: 49 pre-tokens by Qwen2's pre-tokenizer rule (digits apart,
punctuation runs), 50 with the end token, 56 inside a ```json fence). The other judgments answer in 7-28 tokens;
a real model stops a batch when its longest answer ends. ``--tiny`` runs a tiny model on the CPU instead (for
the tests). Prints one JSON object; ``--out FILE`` also writes it.

    python benchmarks/vlm_bench.py [--prompts 249] [--batch-size 32] [--max-new-tokens 64] [--device cuda]
        [--dtype bfloat16] [--attn sdpa|flash_attention_2] [--tiny] [--out benchmarks/results/vlm_h200.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mme3dr.data import load_benchmark  # noqa: E402
from mme3dr.metrics.base import ScoreItem  # noqa: E402
from mme3dr.metrics import vlm  # noqa: E402
from mme3dr.render.cameras import transforms_dict  # noqa: E402
from mme3dr.render.presets import get_preset  # noqa: E402

CONFIG = Path(__file__).with_name("qwen25_vl_7b.json")

#: Qwen's special tokens (the processor needs the vision ones, the chat template the im ones).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

#: The chat template of Qwen2.5-VL-Instruct, images only.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE (Qwen2's pre-tokenizer rules) trained on ``corpus``, as a ``Qwen2Tokenizer`` with Qwen's
    special tokens and chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def judge_corpus(prompts) -> list[str]:
    """The texts the judge sends (its four query templates filled in) and the prompts' own words."""
    texts = []
    for r in prompts:
        texts += [vlm.CONSISTENCY_PROMPT.format(n=6, schema=vlm.CONSISTENCY_SCHEMA),
                  vlm.CATEGORY_PROMPT.format(n=6, prompt=r.prompt, schema=vlm.CATEGORY_SCHEMA),
                  vlm.APPEARANCE_PROMPT.format(n=6, schema=vlm.APPEARANCE_SCHEMA),
                  vlm.checklist_prompt([c.question for c in r.checklist], 6)]
    return texts


def build_model(tok, device: str, dtype, attn: str, tiny: bool):
    """Qwen2.5-VL-7B's architecture (or a tiny one) with random weights on ``device``; its processor."""
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    spec = json.loads(CONFIG.read_text())
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text, vision, pixels = dict(spec["text_config"]), dict(spec["vision_config"]), dict(spec["image_processor"])
    if tiny:
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=len(tok),
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
        vision.update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      fullatt_block_indexes=[1])
        pixels.update(max_pixels=56 * 56)
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    with torch.device(device):
        net = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    # Random weights rarely say the end token: none, so that every query generates max_new_tokens tokens.
    net.generation_config = GenerationConfig(pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
                                             eos_token_id=None, **spec["generation"])
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    return processor, net.eval()


def make_items(folder: Path, n: int, size: int = 512) -> list[ScoreItem]:
    """``n`` prompts of the bundled set (cycled), each with six ``size``-pixel views of the ``reward6`` cameras."""
    prompts = list(load_benchmark())
    cameras = get_preset("reward6").camera_set()
    names = [f"{i:03d}.png" for i in range(len(cameras))]
    items = []
    for k in range(n):
        r = prompts[k % len(prompts)]
        d = folder / f"{k:04d}"
        d.mkdir(parents=True)
        for i, name in enumerate(names):
            img = Image.new("RGB", (size, size), (235, 235, 235))
            colour = tuple(int(c) for c in np.random.default_rng(7 * k + i).integers(30, 220, 3))
            ImageDraw.Draw(img).ellipse((size // 5 + 9 * i, size // 5, 4 * size // 5, 4 * size // 5 - 7 * i),
                                        fill=colour, outline=(20, 20, 20), width=3)
            img.save(d / name)
        (d / "transforms.json").write_text(json.dumps(transforms_dict(cameras, names)))
        items.append(ScoreItem(f"{r.id}#{k}", r.category, r.prompt, r.checklist, render_dir=d))
    return items


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=249)
    ap.add_argument("--batch-size", type=int, default=vlm.DEFAULTS.vlm_batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--attn", default="sdpa", help="sdpa, or flash_attention_2 where flash-attn is installed")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (2 layers) instead of the 7B architecture")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else
                                                           torch.float32)
    start = time.perf_counter()
    prompts = list(load_benchmark())
    tok = build_tokenizer(judge_corpus(prompts) + [r.prompt for r in prompts], 2000 if args.tiny else 16000)
    processor, net = build_model(tok, device, dtype, args.attn, args.tiny)
    backend = vlm.TransformersVLM.from_loaded(processor, net, "random-qwen2.5-vl-7b" + ("-tiny" if args.tiny else ""),
                                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    judge = vlm.VLMJudge(backend)
    build_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        items = make_items(Path(tmp), args.prompts)
        plans = [judge.plan(item) for item in items[:8]]
        lengths = [len(processor(text=[processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]}],
            add_generation_prompt=True, tokenize=False)], images=images)["input_ids"][0])
            for plan in plans for images, text in plan.queries()]
        judge.score_many(items[:1])  # warm-up (kernels, allocator), not timed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        results = []
        for first in range(0, len(items), judge.batch_items):
            results += judge.score_many(items[first:first + judge.batch_items])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    queries = sum(len(r.details["queries"]) for r in results if not r.error)
    out = {
        "model": "Qwen2.5-VL-7B architecture, random weights" if not args.tiny else "tiny Qwen2.5-VL, random weights",
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."), "attn": args.attn, "transformers": transformers.__version__,
        "torch": torch.__version__, "prompts": args.prompts, "views": 6, "view_size": 512, "queries": queries,
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "prompt_tokens_per_query": {"mean": round(float(np.mean(lengths)), 1), "min": int(min(lengths)),
                                    "max": int(max(lengths)), "sampled_queries": len(lengths)},
        "new_tokens_per_query": args.max_new_tokens, "batch_size": args.batch_size, "items_per_call": judge.batch_items,
        "build_s": round(build_s, 2), "wall_s": round(wall, 2), "queries_per_s": round(queries / wall, 3),
        "s_per_query": round(wall / max(queries, 1), 4),
        "peak_gpu_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20) if device.startswith("cuda")
                         else None),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
