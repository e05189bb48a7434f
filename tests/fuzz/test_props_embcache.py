"""Property: whatever a cache file holds (any bytes, or a valid .npy of any shape, dtype and values), the
embedding cache returns a finite float32 array of exactly the configured shape, or None and removes the file;
it never raises."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llava_local.embcache import EmbeddingCache, cache_key
from llava_local.preprocess import PreprocessConfig

SHAPE = (16, 8)
IMAGE = "ab" * 32


def _cache(directory) -> EmbeddingCache:
    return EmbeddingCache("v" * 64, PreprocessConfig(size=32), directory, shape=SHAPE)


def _check(tmp, payload: bytes) -> None:
    cache = _cache(tmp)
    key = cache_key(IMAGE, cache.vision_sha256, cache.preprocess)
    path = tmp / key[:2] / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    got = cache.get(IMAGE)
    if got is None:
        assert not path.exists()  # removed: recomputed once, not a miss forever
    else:
        assert got.shape == SHAPE and got.dtype == np.float32 and np.isfinite(got).all()


@given(st.binary(max_size=600))
def test_any_bytes(tmp_path_factory, payload):
    _check(tmp_path_factory.mktemp("c"), payload)


@given(hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=20)))
def test_any_npy_array(tmp_path_factory, arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    _check(tmp_path_factory.mktemp("c"), buf.getvalue())


@given(st.sampled_from([np.float16, np.float32, np.float64]), st.floats(-1e4, 1e4))
def test_a_valid_entry_is_returned(tmp_path_factory, dtype, value):
    buf = io.BytesIO()
    np.save(buf, np.full(SHAPE, value, dtype))
    tmp = tmp_path_factory.mktemp("c")
    _check(tmp, buf.getvalue())
    assert _cache(tmp).get(IMAGE) is not None
