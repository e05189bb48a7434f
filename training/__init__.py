"""Training: LLaVA two-stage visual instruction tuning and its data pipeline."""

import llava_local  # noqa: F401,E402  (first: it turns onnxruntime's telemetry off before anything imports onnxruntime)
