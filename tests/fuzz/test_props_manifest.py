"""Property: whatever bytes or JSON sit in manifest.json, `load_manifest` returns a valid Manifest or raises one
BundleError; never another exception (a traceback for the user)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from llava_local.errors import BundleError
from llava_local.manifest import Manifest, load_manifest

VALID = {
    "schema_version": 1, "name": "tiny",
    "preprocess": {"mode": "pad", "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                   "resample": "bicubic"},
    "vision": {"files": {"fp32": "vision.onnx"}, "default": "fp32", "tokens_per_image": 16, "embed_dim": 64,
               "input_name": "pixel_values", "output_name": "image_embeds"},
    "llm": {"files": {"f32": "llm-f32.gguf"}, "default": "f32", "context_length": 512},
    "template": "vicuna_v1", "system_prompt": None, "stop_strings": ["</s>"], "suggested_prompts": ["What is it?"],
    "files": {"vision.onnx": {"sha256": "0" * 64, "size": 3}, "llm-f32.gguf": {"sha256": "1" * 64, "size": 5}},
    "provenance": {}, "parity": {},
}

# JSON values, including the non-standard ones Python's json module reads (NaN, Infinity, huge numbers).
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | \
    st.sampled_from([10**400, -1, 0, "", "..", "/etc/passwd", "a\0b", "vision.onnx", "pad", "crop", "f32"])
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                             kids, max_size=4),
                           max_leaves=12)


def _paths(d: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a nested dict/list."""
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(VALID)


def _bundle(tmp: Path, text: str | bytes) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vision.onnx").write_bytes(b"abc")
    (tmp / "llm-f32.gguf").write_bytes(b"abcde")
    path = tmp / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return tmp


def _load(tmp: Path) -> None:
    try:
        result = load_manifest(tmp)
    except BundleError as e:
        assert "\n" not in str(e)  # one line
    else:
        assert isinstance(result, Manifest)
        result.to_dict()  # and it round-trips


@given(st.binary(max_size=400))
def test_any_bytes(tmp_path_factory, data):
    _load(_bundle(tmp_path_factory.mktemp("m"), data))


@given(json_values)
def test_any_json(tmp_path_factory, value):
    _load(_bundle(tmp_path_factory.mktemp("m"), json.dumps(value)))


@given(st.lists(st.tuples(st.sampled_from(PATHS), json_values | st.just("__delete__")), min_size=1, max_size=3))
def test_a_valid_manifest_with_fields_replaced_or_removed(tmp_path_factory, edits):
    d = copy.deepcopy(VALID)
    for path, value in edits:
        node = d
        try:
            for key in path[:-1]:
                node = node[key]
            if value == "__delete__":
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    _load(_bundle(tmp_path_factory.mktemp("m"), json.dumps(d)))


def test_the_valid_manifest_loads(tmp_path):
    assert load_manifest(_bundle(tmp_path, json.dumps(VALID))).name == "tiny"
