"""The feature cache: a round trip through its file, stored keys replaced in place, and memory that holds the
features once (loading, saving and reading make no second copy)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mme3dr.metrics import features
from mme3dr.metrics.features import FeatureCache

WIDTH, VIEWS, OBJECTS = 1024, 24, 48


class _Extractor:
    name, weights_id = "inception", "test-weights"


def _filled(folder) -> tuple[FeatureCache, list[str], np.ndarray]:
    cache = FeatureCache(folder, _Extractor())
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((OBJECTS * VIEWS, WIDTH)).astype(np.float32)
    keys = [f"renders/p{o}/{v:03d}.png@{o:012d}" for o in range(OBJECTS) for v in range(VIEWS)]
    for o in range(OBJECTS):  # one put per object, as the image pass stores them
        cache.put(keys[o * VIEWS:(o + 1) * VIEWS], rows[o * VIEWS:(o + 1) * VIEWS].astype(np.float64))
    return cache, keys, rows


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("chunk_rows", [50, 1 << 16])  # objects across chunk boundaries; all in one chunk
def test_round_trip_in_any_key_order_and_a_stored_key_is_replaced(tmp_path, monkeypatch, chunk_rows):
    monkeypatch.setattr(features, "CHUNK_BYTES", chunk_rows * WIDTH * 4)
    cache, keys, rows = _filled(tmp_path)
    cache.put([keys[5], "new-key"], np.full((2, WIDTH), 7.0))
    rows[5] = 7.0
    cache.save()
    again = FeatureCache(tmp_path, _Extractor())
    order = np.random.default_rng(1).permutation(len(keys))
    for c in (cache, again):
        assert c.get([keys[i] for i in order]).tobytes() == rows[order].tobytes()
        assert c.get([keys[i] for i in order], device="cpu").numpy().tobytes() == rows[order].tobytes()
        assert np.array_equal(c.get(["new-key", keys[0]]), np.stack([np.full(WIDTH, 7, np.float32), rows[0]]))
        assert c.missing([keys[3], "other"]) == ["other"]
    with np.load(cache.path) as data:  # an ordinary .npz
        assert data["features"].dtype == np.float32 and data["features"].shape == (len(keys) + 1, WIDTH)
        assert data["keys"].tolist() == [*keys, "new-key"]
    with pytest.raises(KeyError, match="no features for 1 view"):
        again.get(["other"])
    again.put([keys[1], "later"], np.full((2, WIDTH), 3.0))  # a loaded cache: one row replaced, one added
    again.save()
    assert np.array_equal(FeatureCache(tmp_path, _Extractor()).get([keys[0], keys[1], "later", "new-key"]),
                          np.stack([rows[0], *np.full((2, WIDTH), 3, np.float32), np.full(WIDTH, 7, np.float32)]))


def test_saving_and_loading_hold_the_features_once(tmp_path):
    """Peak traced memory while saving stays far below the features' size (they are streamed to the file, not
    stacked and buffered: two extra copies before), and loading holds them about once (the file's array, not a
    float32 copy of it as well)."""
    cache, keys, rows = _filled(tmp_path)
    assert _peak_bytes(lambda: cache.get(keys, device="cpu")) < 1.2 * rows.nbytes  # the output, nothing more
    assert _peak_bytes(cache.save) < 0.5 * rows.nbytes
    loaded = []
    assert _peak_bytes(lambda: loaded.append(FeatureCache(tmp_path, _Extractor()))) < 1.5 * rows.nbytes
    assert loaded[0].get(keys).tobytes() == rows.tobytes()
