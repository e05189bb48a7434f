"""Properties of the header checks in front of llama.cpp and ONNX Runtime: any bytes, any truncation and any
corruption of a real GGUF / ONNX file is either accepted or refused with one BundleError line, never another
exception; every strict prefix of a real GGUF is refused (the tensor data must fit in the file); and whatever
`check_onnx` lets through, ONNX Runtime refuses with a BundleError rather than crashing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llava_local.errors import BundleError
from llava_local.integrity import check_gguf, check_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import tinyllava  # noqa: E402


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("real")
    tinyllava.write_gguf(d / "m.gguf")
    tinyllava.write_vision_onnx(d / "v.onnx")
    return {"gguf": (d / "m.gguf").read_bytes(), "onnx": (d / "v.onnx").read_bytes()}


def _verdict(check, path: Path) -> bool:
    try:
        check(path)
    except BundleError as e:
        assert "\n" not in str(e)
        return False
    return True


@given(data=st.binary(max_size=2000), magic=st.booleans(), version=st.sampled_from([b"\2\0\0\0", b"\3\0\0\0"]))
def test_any_bytes_are_accepted_or_refused_in_one_line(tmp_path_factory, data, magic, version):
    p = tmp_path_factory.mktemp("h") / "x.gguf"
    p.write_bytes((b"GGUF" + version if magic else b"") + data)  # half the time past the magic and version
    _verdict(check_gguf, p)
    _verdict(check_onnx, p)


def test_every_truncation_of_a_real_gguf_is_refused(real_files, tmp_path):
    data, p = real_files["gguf"], tmp_path / "t.gguf"
    p.write_bytes(data)
    assert _verdict(check_gguf, p)
    # every prefix that cuts the first 64 bytes, every 7th through the key/value and tensor tables (the tiny
    # vocabulary makes them ~10 KB), then 64 cuts spread over the tensor data, and the last byte missing
    header = 16 * 1024
    cuts = [*range(64), *range(64, header, 7), *range(header, len(data), max(1, (len(data) - header) // 64))]
    for n in [*cuts, len(data) - 1]:
        p.write_bytes(data[:n])
        assert not _verdict(check_gguf, p), n


@given(flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), min_size=1, max_size=8))
def test_corrupted_gguf_headers_never_raise_anything_else(real_files, tmp_path_factory, flips):
    data = bytearray(real_files["gguf"])
    for pos, x in flips:
        data[pos % len(data)] ^= x
    p = tmp_path_factory.mktemp("g") / "c.gguf"
    p.write_bytes(bytes(data))
    _verdict(check_gguf, p)


@given(cut=st.integers(0, 10**9), flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=6))
def test_damaged_onnx_is_refused_by_the_check_or_by_onnxruntime(real_files, tmp_path_factory, cut, flips):
    from llava_local.vision import open_session

    data = bytearray(real_files["onnx"])
    for pos, x in flips:
        data[pos % len(data)] ^= x
    data = bytes(data[: cut % (len(data) + 1)])
    p = tmp_path_factory.mktemp("o") / "v.onnx"
    p.write_bytes(data)
    if _verdict(check_onnx, p):
        try:
            open_session(p, "cpu", threads=1)
        except BundleError as e:
            assert "\n" not in str(e)
