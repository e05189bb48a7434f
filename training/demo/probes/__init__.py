"""Diagnostics for the demo recipe: small experiments run by hand, never called by the recipe.

Each one asks one question about a part of the pipeline, in seconds or minutes instead of a full recipe run, and
reads what an earlier recipe stage left in its work directory (default `build/demo`):

- `tower_probe`: what a vision tower's tokens say about the object in their cell (a linear probe of shape and
  colour; its confusions are the model's). After the clip stage:
  `python -m training.demo.probes.tower_probe build/demo/base-clip`
- `lookup_probe`: whether the LLaMA can learn to find the object a question names, with perfect (or a real
  tower's) image features and one question type. After the lm stage (and the clip stage for `--tower`):
  `python -m training.demo.probes.lookup_probe --form chat --init base --lr 5e-4`
- `perfect_tower`: LLaVA stage 2 on the demo data with a perfect vision tower, to see whether the tower,
  projector and stage 1 or the language model limit the score. After the data and lm stages:
  `python -m training.demo.probes.perfect_tower --work build/demo`
- `relation_axes`: relation answers split by axis (left/right, above/below) and by what the image tokens' reading
  order says about the answer, to tell a model that compares cells from one that does not. After any LLaVA stage:
  `python -m training.demo.probes.relation_axes build/demo/polish`

`--help` on each lists its options; docs/demo-model-history.md reports what they found.
"""
