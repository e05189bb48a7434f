"""Fixtures of the interop tests: llama.cpp-style files made from the tiny checkpoint, on the spot.

- `f16_checkpoint` (session): `tiny_hf_checkpoint` with every float weight rounded to a float16-representable
  value, so an F16 mmproj/GGUF of it loses nothing and "same embeddings" can be asked to 1e-3.
- `f16_bundle` (session): that checkpoint through the real `convert` (f16 GGUF, fused fp32 vision graph).
- `legacy_pair` (session): `(llm.gguf, mmproj.gguf)` as the llama.cpp world has them: the mmproj in the legacy
  LLaVA-1.5 layout (`converters.mmproj.write_mmproj`), the LLM GGUF of the bundle; both stripped of every
  `llava_local.*` key, so nothing of ours identifies the template or the preprocessing; the LLM keeps the
  `tokenizer.chat_template` a converter writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from interop_helpers import rewrite_gguf


@pytest.fixture(scope="session")
def f16_checkpoint(tiny_hf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("f16-ckpt") / "checkpoint"
    shutil.copytree(tiny_hf_checkpoint, out)
    path = out / "model.safetensors"
    state = load_file(str(path))
    save_file({k: v.half().to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}, str(path),
              metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def f16_bundle(f16_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.bundle import ConvertOptions, convert
    from converters.cli import quiet_libraries

    out = tmp_path_factory.mktemp("f16-bundle") / "tiny16"
    with quiet_libraries():
        convert(ConvertOptions(src=f16_checkpoint, out=out, quants=("f16",), name="tiny16", verify=False),
                show_progress=False)
    return out


@pytest.fixture(scope="session")
def legacy_pair(f16_checkpoint: Path, f16_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Path]:
    from converters.layouts import load_checkpoint
    from converters.mmproj import write_mmproj

    d = tmp_path_factory.mktemp("legacy")
    ours = write_mmproj(load_checkpoint(f16_checkpoint), d / "ours-mmproj.gguf")
    mmproj = rewrite_gguf(ours, d / "mmproj-model-f16.gguf", drop=("llava_local.",))
    llm = rewrite_gguf(f16_bundle / "llm-f16.gguf", d / "tiny-llava-f16.gguf", drop=("llava_local.",))
    return llm, mmproj
