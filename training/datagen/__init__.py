"""Visual instruction data for LLaVA, made offline.

Three commands share one pipeline (`llava-local data ...`):

- `pretrain`: image–caption pairs → stage-1 LLaVA JSON (a brief-description request + the caption).
- `generate`: captions + boxes → the paper's symbolic context → an LLM (local GGUF, an OpenAI-compatible
  endpoint, or the rule-based teacher) → parsed, validated `conversation` / `detail` / `complex_reasoning`
  samples in LLaVA JSON, resumable from an fsync'd journal.
- `synth`: a deterministic world of rendered shapes with COCO-style captions and boxes, fed through the
  same pipeline with the teacher, every answer confirmed by the checker.

Output is LLaVA JSON: `[{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}]`, with
"<image>\\n" at the start of the first human turn. Nothing here imports torch.
"""
