"""`cpuprobe`: the child-process probe runs only where llama.cpp could pick its AMX buffer type (a CPU that
advertises AMX *and* a build compiled with AMX); elsewhere the extra buffer types are CPU_REPACK alone, safe without
a probe, and on unless the CPU has AVX-512 (where `make bench` measured them slower). `LLAVA_LOCAL_REPACK` forces
the answer."""

from __future__ import annotations

from llava_local import cpuprobe


def test_amx_advertised_but_not_in_the_build_needs_no_probe(rt_bundle, monkeypatch, _rt_home):
    gguf = rt_bundle / "llm-f32.gguf"
    monkeypatch.setattr(cpuprobe, "_cpu_flags", lambda: "fpu avx2 avx512f amx_bf16 amx_tile amx_int8")
    ok = cpuprobe.extra_buffers_ok(gguf, "f32")
    safe = cpuprobe.extra_buffers_safe(gguf, "f32")
    probed = (_rt_home / "cache" / "cpu-probe.json").is_file()
    if cpuprobe.build_has_amx():  # an AMX build: the probe must run (and on a working CPU say yes)
        assert probed
    else:  # CPU_REPACK only: nothing to probe; safe, and off on this AVX-512 CPU
        assert safe is True and ok is False and not probed


def test_no_amx_flag_means_no_probe_repack_follows_the_measurement_and_the_variable_forces(
        rt_bundle, monkeypatch, _rt_home):
    gguf = rt_bundle / "llm-f32.gguf"
    monkeypatch.setattr(cpuprobe, "_cpu_flags", lambda: "fpu avx2 fma")
    assert cpuprobe.extra_buffers_ok(gguf, "f32") is True  # AVX2 only: llama.cpp's default, repack on
    monkeypatch.setattr(cpuprobe, "_cpu_flags", lambda: "fpu avx2 fma avx512f avx512bw")
    assert cpuprobe.extra_buffers_ok(gguf, "f32") is False  # AVX-512: measured slower (docs/benchmarks.md)
    assert cpuprobe.extra_buffers_safe(gguf, "f32") is True
    assert not (_rt_home / "cache" / "cpu-probe.json").exists()
    monkeypatch.setenv(cpuprobe.REPACK_ENV, "1")
    assert cpuprobe.extra_buffers_ok(gguf, "f32") is True
    monkeypatch.setenv(cpuprobe.REPACK_ENV, "0")
    assert cpuprobe.extra_buffers_ok(gguf, "f32") is False
