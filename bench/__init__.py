"""`python -m bench` (`make bench`): runtime performance on a model large enough to matter. Not a test.

Builds once (cached under `bench-out/`) a random-weight LLaVA with a CLIP ViT-L/14-336-sized tower, an mlp2x
projector and a LLaMA of a few hundred million parameters, converts it with the project's converter (q4_k_m and
f16 GGUFs, fp32 and int8 vision graphs), then measures on the same weights, in one run:
- decode tokens/s: our engine (ChatSession: sampler chain, UTF-8 stream, stop strings) vs a raw llama.cpp loop
  (llama_batch_get_one + greedy sampler) vs transformers eager (fp32, KV cache);
- image encode time: ONNX Runtime fp32 / int8 vs torch eager.
It writes `docs/benchmarks.md` with the numbers, the ratios, the targets and a description of the machine.
"""

import llava_local  # noqa: F401,E402  (first: it turns onnxruntime's telemetry off before anything imports onnxruntime)
