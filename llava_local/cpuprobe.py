"""Can llama.cpp's extra CPU buffer types (weight repacking, AMX) run on this machine?

`use_extra_bufts` (llama_model_params) switches all of ggml-cpu's extra buffer types at once: AMX (only in builds
compiled with AMX, whose system info says `AMX_INT8 = 1`) and CPU_REPACK (`REPACK = 1`: quantized weights
interleaved for the AVX2/AVX-512/NEON GEMM kernels, the same instructions the plain kernels use). llama.cpp
0.3.36 has no switch for one of them alone: a `tensor_buft_overrides` entry puts a tensor in a buffer type without
asking whether that type can hold it, and CPU_REPACK dereferences a null pointer for a tensor it cannot repack.

Contract: `extra_buffers_ok(gguf, quant) -> bool` is the runtime's choice; `extra_buffers_safe(gguf, quant)` only
says whether turning them on cannot kill the process. `LLAVA_LOCAL_REPACK=0|1` forces the choice.
- Safety: some virtual machines advertise AMX in CPUID but fault on AMX instructions; llama.cpp then dies with
  SIGILL on the first quantized matmul, which no Python code can catch. Probed only where that can happen, a CPU
  that advertises AMX running a build with AMX: a child process loads the model with the extra buffer types and
  decodes two tokens; a crash means "no" (and then repacking is off too). The answer is cached per (CPU flags,
  llama-cpp-python version, quant) in the cache dir, so the probe runs once per machine and quantization.
  Everywhere else the extra buffer types are CPU_REPACK alone, which is always safe.
- Speed, CPU_REPACK alone: `make bench` measured it on vs off (docs/benchmarks.md). On an AVX-512 CPU (AMD EPYC)
  it made the prompt prefill of a q4_k_m model 20-24% slower (CPU time, 0.76-0.80x in three runs) for a decode
  change within the noise (0.93-1.19x; the f16 control, which repacks nothing, moved up to 1.20x), so it is off on
  CPUs with AVX-512; on AVX2-only and ARM CPUs (unmeasured here) it stays on, llama.cpp's own default. Where the
  AMX buffer type is possible and the probe passes, the extra buffer types stay on (AMX is the point there).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from .paths import cache_dir

REPACK_ENV = "LLAVA_LOCAL_REPACK"

_PROBE = """
import sys, llama_cpp
llama_cpp.llama_log_set(llama_cpp.llama_log_callback(lambda *a: None), None)
llama_cpp.llama_backend_init()
mp = llama_cpp.llama_model_default_params()
mp.n_gpu_layers = 0
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), mp)
cp = llama_cpp.llama_context_default_params()
cp.n_ctx = 64; cp.n_batch = 8; cp.n_ubatch = 8; cp.n_threads = 1; cp.n_threads_batch = 1
ctx = llama_cpp.llama_init_from_model(model, cp)
toks = (llama_cpp.llama_token * 2)(1, 1)
sys.exit(0 if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(toks, 2)) == 0 else 3)
"""


@functools.cache  # /proc/cpuinfo does not change while we run; several checks per model open read it
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def build_has_amx() -> bool:
    """Whether this llama.cpp build has ggml's AMX buffer type (compiled with AMX-INT8)."""
    import llama_cpp

    return "AMX_INT8 = 1" in (llama_cpp.llama_print_system_info() or b"").decode(errors="replace")


def amx_possible() -> bool:
    """Whether llama.cpp could pick its AMX buffer type here: the CPU advertises AMX and the build has it."""
    return "amx_tile" in _cpu_flags().split() and build_has_amx()


def repack_pays() -> bool:
    """Whether CPU_REPACK alone is the faster choice on this CPU (see the module docstring: not with AVX-512)."""
    return "avx512f" not in _cpu_flags().split()


def extra_buffers_ok(gguf: Path, quant: str) -> bool:
    """The runtime's default for `Engine(extra_buffers=...)` on this machine and quant."""
    forced = os.environ.get(REPACK_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if not amx_possible():
        return repack_pays()
    return extra_buffers_safe(gguf, quant)


def extra_buffers_safe(gguf: Path, quant: str) -> bool:
    """Whether llama.cpp's extra buffer types cannot crash this process (probed, cached; see the module docstring)."""
    flags = _cpu_flags()
    if not amx_possible():
        return True  # no AMX buffer type can be chosen: CPU_REPACK only, which uses the plain kernels' ISA
    import llama_cpp

    key = hashlib.sha256(f"{flags}|{llama_cpp.__version__}|{quant}".encode()).hexdigest()[:32]
    path = cache_dir() / "cpu-probe.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):  # valid JSON but not ours (a list, a string): probe again and rewrite it
        known = {}
    if key in known:
        return bool(known[key])
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, timeout=300)
        ok = r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    known[key] = ok
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    except OSError:
        pass
    return ok
