"""The demo model's recipe: llava-local-tiny, trained end to end by the project's own method at toy scale.

`python -m training.demo.recipe --out models/llava-local-tiny` runs, on CPU in about half an hour:
tokenizer → LLaMA pretraining → CLIP-style contrastive pretraining → LLaVA stage 1 → stage 2 → convert,
on the synthetic world of `training.datagen`. The modules here hold only what the generic training code
does not: the two base-model pretrainers (`lm_pretrain`, `clip_pretrain`), the corpora (`corpus`), the
driver (`recipe`) and the held-out evaluation (`evaluate`, behind `llava-local eval`). Diagnostics the recipe
never calls, run by hand to test one part of it, are in `probes`.
"""
