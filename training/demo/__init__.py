"""The demo model's recipe: llava-local-tiny, trained end to end by the project's own method at toy scale.

`make demo-model` (`python -m training.demo.recipe --out models/llava-local-tiny`) runs it from nothing on CPU, in
one go: tokenizer → LLaMA pretraining → CLIP-style contrastive pretraining → LLaVA stage 1 → a short curriculum →
stage 2 → convert → eval, on the synthetic world of `training.datagen` (docs/demo-model.md gives its time and
results). The modules here hold only what the generic training code does not: the recipe's config
(`recipe_config`, read from `recipe.yaml`) and driver (`recipe`), the two base-model pretrainers (`lm_pretrain`,
`clip_pretrain`), the corpora and the wordings people ask in (`corpus`, `phrasings`), the held-out gate that decides
how long the listing trains (`gates`), the held-out evaluation (`evaluate`, behind `llava-local eval`) and the run
across vision-tower seeds (`spread`). Diagnostics the recipe never calls, run by hand to test one part of it, are in
`probes`.
"""
