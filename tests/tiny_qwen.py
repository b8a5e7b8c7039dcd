"""A tiny, randomly initialised Qwen2.5-VL saved like a real checkpoint (no downloads).

``build_tiny_qwen25_vl(folder)`` writes ``config.json``, the weights, ``generation_config.json``, a byte-level BPE
tokenizer trained here with the ``tokenizers`` library (wrapped as the real ``Qwen2Tokenizer`` with Qwen's special
tokens), a ``Qwen2VLImageProcessor`` limited to small images and the Qwen2-VL chat template. The folder then loads
through the same code as real weights (``AutoProcessor`` + ``AutoModelForImageTextToText``), e.g.
``TransformersVLM(model=str(folder))``. ``extra_tokens`` (e.g. ``<mesh-start>``, ``<mesh0>`` ...) are added to the
vocabulary as ordinary (non-special) tokens, for tiny text-to-3D policies built on the same base.

Sizes: 2 text layers of width 64, 2 vision blocks of width 32; an image of at most 56x56 pixels becomes 4 image
tokens, so a query with 6 views runs in well under a second on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

#: Qwen's special tokens, in the order of the real vocabulary (151643 ...); the processor needs the vision ones.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

#: The chat template of Qwen2-VL / Qwen2.5-VL-Instruct (images and videos as vision placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "These images are views of one 3D object rendered from different camera angles.",
    "Answer with only a JSON object: {\"shape\": 1, \"appearance\": 0.5, \"parts\": 0} or {\"q1\": \"yes\"}.",
    "A deep red rose, with smooth curled petals on a slender green stem.",
    "Dark brown wooden rocking chair with curved armrests and spindle backrest.",
    "Electric guitar with green asymmetrical body, white pickguard, yellow neck.",
    "Please generate a 3D mesh based on the prompt I provided: a low-poly white chess pawn.",
    "Does the object match the category? Is the colour smooth? Is the material realistic? yes no true false",
]


def build_tokenizer(extra_tokens: Sequence[str] = (), vocab_size: int = 400) -> Qwen2Tokenizer:
    """A byte-level BPE trained on a few sentences, as a ``Qwen2Tokenizer`` with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([  # Qwen2Tokenizer's own rules, so the merges fit it
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    if extra_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_qwen25_vl(folder: str | Path, extra_tokens: Sequence[str] = (), seed: int = 0) -> Path:
    """Save a tiny random Qwen2.5-VL (model, tokenizer, processor, chat template) to ``folder``; return it."""
    folder = Path(folder)
    tok = build_tokenizer(extra_tokens)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                         fullatt_block_indexes=[1], window_size=56)
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    )
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
