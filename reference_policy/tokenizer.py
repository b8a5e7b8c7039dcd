"""Text + mesh-token vocabulary of the reference policy (a ``tokenizers`` word-level model).

Design: the world's prompts and plans use a few hundred words, so a word-level vocabulary is smaller and easier to
read than BPE; unknown words map to ``<unk>`` and never crash. Normalisation is NFKC + lower-casing; the
pre-tokenizer splits on whitespace and punctuation (``\\w+|[^\\w\\s]+``) and then into single digits, so any
number is spelled with the ten digit tokens (always in the vocabulary).

Id layout (fixed; ``Kc`` coarse and ``Kf`` fine codebook sizes of the VQ-VAE):

====================  ==============================================================
``0 .. 9``            ``<pad> <bos> <eos> <unk> <plan> </plan> <step1> <step2> <mesh-start> <mesh-end>``
``10 .. 10+Kc-1``     ``<mesh0> .. <mesh{Kc-1}>``: coarse codes (step 1), code ``c`` -> id ``10 + c``
``10+Kc .. +Kf-1``    ``<mesh{Kc}> .. <mesh{Kc+Kf-1}>``: fine codes (step 2), code ``f`` -> id ``10 + Kc + f``
``10+Kc+Kf ..``       words (digits first, then the training words sorted)
====================  ==============================================================

The special and mesh tokens are registered as special tokens: they are matched verbatim in raw text and skipped by
:meth:`TextTokenizer.decode`. Decoding joins words with single spaces, so ``decode(encode(t)) == normalise(t)``.
Saved as ``tokenizer.json`` + ``mesh_vocab.json`` (``{"n_coarse": Kc, "n_fine": Kf}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<plan>", "</plan>", "<step1>", "<step2>",
                             "<mesh-start>", "<mesh-end>")
PAD, BOS, EOS, UNK, PLAN, END_PLAN, STEP1, STEP2, MESH_START, MESH_END = range(len(SPECIALS))
DIGITS: tuple[str, ...] = tuple("0123456789")


def _pipeline() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    return (normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
            pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]))


def words_of(text: str) -> list[str]:
    """The word pieces of ``text`` after normalisation and pre-tokenisation."""
    norm, pre = _pipeline()
    return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def normalise(text: str) -> str:
    """``text`` as the tokenizer sees it: lower-cased word pieces joined by single spaces."""
    return " ".join(words_of(text))


class TextTokenizer:
    """Word-level tokenizer with the special and mesh tokens of the module docstring."""

    def __init__(self, tokenizer: Tokenizer, n_coarse: int, n_fine: int) -> None:
        self.tokenizer = tokenizer
        self.n_coarse = n_coarse
        self.n_fine = n_fine
        self.coarse_offset = len(SPECIALS)
        self.fine_offset = self.coarse_offset + n_coarse
        self.word_offset = self.fine_offset + n_fine
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], n_coarse: int, n_fine: int) -> TextTokenizer:
        """Vocabulary = specials + mesh tokens + digits + every word piece of ``texts`` (sorted)."""
        words = sorted({w for t in texts for w in words_of(t)} - set(DIGITS))
        mesh = [f"<mesh{i}>" for i in range(n_coarse + n_fine)]
        vocab = {tok: i for i, tok in enumerate([*SPECIALS, *mesh, *DIGITS, *words])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer, tok.pre_tokenizer = _pipeline()
        tok.add_special_tokens([*SPECIALS, *mesh])
        return cls(tok, n_coarse, n_fine)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no ``<bos>``/``<eos>`` added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Word ids joined by spaces; special and mesh tokens are dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def coarse_ids(self, codes: Iterable[int]) -> list[int]:
        """Token ids of coarse codebook indices."""
        return [self.coarse_offset + int(c) for c in codes]

    def fine_ids(self, codes: Iterable[int]) -> list[int]:
        """Token ids of fine codebook indices."""
        return [self.fine_offset + int(c) for c in codes]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "mesh_vocab.json").write_text(json.dumps({"n_coarse": self.n_coarse, "n_fine": self.n_fine}))

    @classmethod
    def load(cls, folder: str | Path) -> TextTokenizer:
        folder = Path(folder)
        meta = json.loads((folder / "mesh_vocab.json").read_text())
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), meta["n_coarse"], meta["n_fine"])
