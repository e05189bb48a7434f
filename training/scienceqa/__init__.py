"""ScienceQA, the LLaVA paper's second use case: the official release → training/eval JSON, the evaluation of a
bundle with the paper's per-category table, and the text-only judge ensemble.

Stages, one module each: `release` (reading `problems.json`/`pid_splits.json`/`images/`), `prompts` (the prompt
formats as a table), `convert` (LLaVA conversation JSON), `extract` (the official scorer's choice extraction),
`score` (the paper's categories and table), `judge` (the text-only judge and the two ensembles), `evaluate`
(asking a bundle through the runtime, resumable JSONL), `synth` (a small ScienceQA-format release drawn from the
synthetic shapes world: a format demonstration, not a science benchmark). Command-line faces: `data_cli`
(`llava-local data scienceqa|synth-scienceqa`) and `eval_cli` (`llava-local eval scienceqa`).
"""
