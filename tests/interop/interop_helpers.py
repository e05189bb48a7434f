"""Helpers of the interop tests (a module of its own so test modules can import them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def rewrite_gguf(src: Path, dst: Path, drop: tuple[str, ...] = (), set_: dict[str, Any] | None = None,
                 tensor: Callable[[Any], tuple[str, Any, Any]] | None = None) -> Path:
    """Copy `src` to `dst` without the keys starting with any of `drop`, with `set_` keys overridden (a str, an int
    written as uint32, or a list written as an array); `tensor(reader_tensor)` → (name, data, raw dtype or None)
    rewrites each tensor (default: as it is)."""
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch=arch, use_temp_file=False)
    set_ = dict(set_ or {})
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith(drop):
            continue
        if name in set_:
            _add(w, name, set_.pop(name))
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for name, value in set_.items():
        _add(w, name, value)
    for t in r.tensors:
        name, data, raw_dtype = tensor(t) if tensor else (t.name, t.data, t.tensor_type)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _add(writer: Any, name: str, value: Any) -> None:
    if isinstance(value, str):
        writer.add_string(name, value)
    elif isinstance(value, list):
        writer.add_array(name, value)
    else:
        writer.add_uint32(name, int(value))
