"""Build llava-local-tiny from nothing: `python -m training.demo.recipe --out models/llava-local-tiny`.

Contract: `Recipe(cfg, work, out, overrides).run()` runs the whole LLaVA method at toy scale on the synthetic world
(`cfg` from `recipe_config.load_recipe`) and leaves a bundle in `out`; every stage's wall time and result go to
`work/recipe-report.json` and into the bundle manifest's provenance (recipe, config, data seed). Fixed seeds
everywhere, so a re-run regenerates the same model (byte-identical with the same torch build, CPU and thread count).

Stages (`--from STAGE` restarts at a stage, reusing the work dir's earlier outputs):
1. data       render `world.scenes` scenes of world `world.seed`; LLaVA JSON for every LLaVA stage
2. tokenizer  SentencePiece with LLaMA's settings on the world's text (`training.tokenizer`)
3. lm         pretrain a small LlamaForCausalLM on that text, chats grounded in written-out scenes (`lm_pretrain`)
4. clip       pretrain a small CLIP ViT contrastively on image–caption and region–phrase pairs (`clip_pretrain`)
5. stage1     LLaVA stage 1 through `training.trainer` (preset `demo-stage1`: projector only)
6. listing    curriculum, part 1, when `stages.listing` names a preset (`demo-listing`: projector + LLM on
              `listing.json`): each object's name, then its region, so the LLaMA learns to find the named object's
              image token
7. lookup     curriculum, part 2, when `stages.lookup` names a preset (`demo-lookup`: projector + LLM on
              `lookup.json`): questions that ask only where a named object is, so the lookup carries over to them
8. relation   curriculum, part 3, when `stages.relation` names a preset (`demo-relation`: projector + LLM on
              `relation.json`): where one object is relative to another, and yes/no relations
9. stage2     LLaVA stage 2 (preset `demo-stage2`: projector + LLM), from the last of stage1 and the curriculum run
10. final     stage 2's data again, from stage 2, when `stages.final` names a preset (`demo-final`: 3,000 steps)
11. polish    a short last pass of stage 2's data, when `stages.polish` names a preset (`demo-polish`: 800 steps)
12. convert   `llava-local convert` of the last LLaVA stage run (polish, else final, else stage2) → quantized GGUF +
              ONNX bundle
13. eval      held-out scenes, in the teacher's and in held-out wordings, through the bundle (llava_local
              ChatSession) and the torch model
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from llava_local.errors import LlavaLocalError, UsageError

from .gates import Gate, gate_probe
from .recipe_config import LLAVA_STAGES, RECIPE_YAML, STAGES, RecipeConfig, load_recipe, native_bf16, scaled_steps

log = logging.getLogger("training.demo.recipe")

# stages that reuse another stage's data file
DATA_OF = {"final": "stage2", "polish": "stage2"}
RECIPE_ID = "llava-local-tiny/18"  # bump when the recipe changes what it trains
# Shown by the chat app on an empty conversation and by `llava-local info`: questions in the phrasings the demo
# model was trained on, about kinds of object any scene of its world may hold.
SUGGESTED_PROMPTS = (
    "Describe the image briefly.",
    "How many circles are there?",
    "What colour is the triangle?",
    "Where is the diamond?",
    "Is there a blue square in the image?",
)


class Recipe:
    """The stages, each a method writing into `work`; `report` collects timings and results."""

    def __init__(self, cfg: RecipeConfig, work: Path, out: Path, stage_overrides: dict[str, list[str]]) -> None:
        self.cfg, self.work, self.out = cfg, work, out
        self.stage_overrides = stage_overrides
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if native_bf16() else "fp32")
        self.report: dict[str, Any] = {"recipe": RECIPE_ID, "config": asdict(cfg), "precision": self.precision,
                                       "stages": {}}
        report_path = work / "recipe-report.json"
        if report_path.is_file():  # keep earlier stages' numbers when restarting with --from
            old = json.loads(report_path.read_text(encoding="utf-8"))
            self.report["stages"] = old.get("stages", {})

    # -- paths
    @property
    def data(self) -> Path:
        return self.work / "data"

    def _scenes(self):
        from .corpus import make_scenes

        return make_scenes(self.cfg.world_seed, self.cfg.scenes)

    # -- stages
    def stage_data(self) -> dict[str, Any]:
        from .corpus import build_dataset, text_corpus

        scenes = self._scenes()
        info = build_dataset(self.data, scenes, self.cfg.image_size, self.cfg.world_seed, self.cfg.mix)
        texts = text_corpus(scenes, self.cfg.world_seed, self.cfg.mix)
        (self.data / "corpus.json").write_text(json.dumps(texts), encoding="utf-8")
        info["text_docs"] = len(texts)
        return info

    def _texts(self) -> list[Any]:
        return json.loads((self.data / "corpus.json").read_text(encoding="utf-8"))

    def stage_tokenizer(self) -> dict[str, Any]:
        from training.tokenizer import train_sentencepiece

        from .corpus import doc_text

        texts = [doc_text(d) for d in self._texts()]
        out = train_sentencepiece(texts, self.work / "tokenizer", vocab_size=self.cfg.vocab_size)
        return {"vocab_size": self.cfg.vocab_size, "dir": str(out)}

    def stage_lm(self) -> dict[str, Any]:
        from .lm_pretrain import pretrain_lm

        lm = replace(self.cfg.lm, precision=self.precision)
        return pretrain_lm(self._texts(), self.work / "tokenizer", self.work / "base-llm", lm)

    def stage_clip(self) -> dict[str, Any]:
        import numpy as np
        import torch

        from llava_local.preprocess import PreprocessConfig, load_image, to_pixels

        from .clip_pretrain import pretrain_clip
        from .corpus import region_phrases

        records = json.loads((self.data / "stage1.json").read_text(encoding="utf-8"))
        pp = PreprocessConfig(mode="pad", size=self.cfg.image_size)
        # each image has a caption and a layout record: decode it once
        paths = [r["image"] for r in records]
        unique = {p: i for i, p in enumerate(dict.fromkeys(paths))}
        decoded = torch.from_numpy(np.stack([to_pixels(load_image(self.data / p), pp) for p in unique]))
        pixels = decoded[torch.tensor([unique[p] for p in paths])]
        captions = [r["conversations"][1]["value"] for r in records]
        scenes = {s.key: s for s in self._scenes()}
        # region–phrase pairs: every object's box with its entry in the written scene, and hard negatives
        regions = [region_phrases(scenes[r["id"].split("-")[0]], self.cfg.clip.empty_regions) for r in records]
        return pretrain_clip(pixels, captions, self.work / "tokenizer", self.work / "base-clip", self.cfg.clip,
                             regions=regions)

    def _train(self, preset: str, stage: str, extra: list[str]) -> dict[str, Any]:
        from training.config import load_config
        from training.trainer import run_training

        w = self.work
        overrides = [f"model.vision_tower={w / 'base-clip'}", f"model.language_model={w / 'base-llm'}",
                     f"data.json={self.data / f'{DATA_OF.get(stage, stage)}.json'}", f"train.out_dir={w / stage}",
                     f"train.precision={self.precision}", *extra,
                     *self.stage_overrides.get(stage, [])]
        cfg = load_config(preset, overrides)
        if self.cfg.stage_scale != 1.0:  # a trial run: the preset's step count shrinks with everything else
            overrides.append(f"optim.max_steps={scaled_steps(cfg.optim.max_steps, self.cfg.stage_scale)}")
            cfg = load_config(preset, overrides)
        gate, history = self.cfg.gates.get(stage), []
        if gate is not None:
            overrides += self._gate_overrides(gate, cfg)
            cfg = load_config(preset, overrides)
        shutil.rmtree(cfg.train.out_dir, ignore_errors=True)  # a recipe run always starts the stage afresh
        probe = gate_probe(gate, self.cfg.gate_n, self.cfg.gate_seed, history) if gate else None
        out = run_training(cfg, probe=probe)
        metrics = Path(out) / "metrics.jsonl"
        last = {}
        if metrics.is_file():
            lines = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
            last = lines[-1] if lines else {}
        result = {"preset": preset, "overrides": overrides, "final": last}
        if gate is not None:
            steps = int(last.get("step", 0))
            if not history or history[-1]["step"] != steps:  # ran to the cap: score the model it ends with
                probe(Path(out), steps)
            result["gate"] = {"probe": gate.probe, "target": gate.target, "steps": steps, "history": history,
                              "reached": history[-1]["score"] >= gate.target}
            if not result["gate"]["reached"]:
                log.warning("recipe: %s: the %s probe reached %.1f%% of %.1f%% by the cap, %d steps", stage,
                            gate.probe, 100 * history[-1]["score"], 100 * gate.target, steps)
        return result

    def _gate_overrides(self, gate: Gate, cfg: Any) -> list[str]:
        """The stage runs its preset's steps, then probes every `gate.every` steps up to the cap; its warmup stays
        the preset's, as if the cap were not there (the schedule is constant after it)."""
        planned, scale = cfg.optim.max_steps, self.cfg.stage_scale
        if not planned or cfg.optim.schedule != "constant":
            raise UsageError(f"a gated stage needs optim.max_steps and a constant schedule ({cfg.train.out_dir})")
        cap, every = scaled_steps(gate.max_steps, scale), scaled_steps(gate.every, scale)
        if cap < planned:
            raise UsageError(f"gate max_steps {gate.max_steps} is below the preset's optim.max_steps {planned}")
        warmup = cfg.optim.warmup_for(planned)
        return [f"optim.max_steps={cap}", f"optim.warmup_steps={warmup}", f"train.probe_after={planned}",
                f"train.probe_every={every}"]

    def stage_stage1(self) -> dict[str, Any]:
        return self._train(self.cfg.stage1, "stage1", [])

    def _previous(self, stage: str) -> Path:
        """The output a LLaVA stage starts from: the last stage before it that the recipe runs (stage 1 at least)."""
        before = [s for s in LLAVA_STAGES if STAGES.index(s) < STAGES.index(stage)]
        return self.work / next(s for s in reversed(before) if s in ("stage1", "stage2") or getattr(self.cfg, s))

    def _last_llava(self) -> Path:
        """The checkpoint the bundle is made from: the last LLaVA stage the recipe runs (what `convert` starts from)."""
        return self._previous("convert")

    def stage_listing(self) -> dict[str, Any]:
        return self._curriculum("listing")

    def stage_lookup(self) -> dict[str, Any]:
        return self._curriculum("lookup")

    def _curriculum(self, stage: str) -> dict[str, Any]:
        preset = getattr(self.cfg, stage)
        if not preset:
            return {"skipped": f"no stages.{stage} in the recipe"}
        return self._train(preset, stage, [f"model.init_from={self._previous(stage)}"])

    def stage_relation(self) -> dict[str, Any]:
        return self._curriculum("relation")

    def stage_stage2(self) -> dict[str, Any]:
        return self._train(self.cfg.stage2, "stage2", [f"model.init_from={self._previous('stage2')}"])

    def stage_final(self) -> dict[str, Any]:
        return self._curriculum("final")

    def stage_polish(self) -> dict[str, Any]:
        return self._curriculum("polish")

    def stage_convert(self) -> dict[str, Any]:
        from llava_local.cli import main as cli_main

        tmp = self.out.with_name(self.out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = ["convert", str(self._last_llava()), "-o", str(tmp), "--quant", self.cfg.quant,
                "--name", "llava-local-tiny", "--force", "--quiet"]
        rc = cli_main(argv)
        if rc != 0:
            raise LlavaLocalError(f"`llava-local {' '.join(argv)}` failed with exit code {rc}")
        self._stamp_provenance(tmp)
        shutil.rmtree(self.out, ignore_errors=True)
        tmp.rename(self.out)
        size = sum(f.stat().st_size for f in self.out.iterdir())
        return {"argv": argv, "bundle_bytes": size}

    def _stamp_provenance(self, bundle: Path) -> None:
        """Record the recipe, its config and the data seed in the manifest, and the questions it suggests to a new
        user (files' hashes are unchanged)."""
        from dataclasses import replace

        from llava_local.manifest import load_manifest, write_manifest

        m = load_manifest(bundle)
        prov = dict(m.provenance)
        prov["source"] = _portable(prov.get("source"), self.work)  # a shipped manifest names no build machine's paths
        prov["recipe"] = {"id": RECIPE_ID, "command": "python -m training.demo.recipe --out models/llava-local-tiny",
                          "config": asdict(self.cfg), "data_seed": self.cfg.world_seed, "precision": self.precision,
                          "timings_s": {k: v.get("seconds") for k, v in self.report["stages"].items()},
                          "run": self.report.get("run")}
        write_manifest(bundle, replace(m, provenance=prov, suggested_prompts=SUGGESTED_PROMPTS))

    def stage_eval(self) -> dict[str, Any]:
        from .evaluate import PHRASINGS, evaluate_bundle, evaluate_torch

        n, seed = self.cfg.eval_n, self.cfg.eval_seed
        out: dict[str, Any] = {}
        for phrasing in PHRASINGS:  # the teacher's wordings and the held-out ones people use
            tag = "" if phrasing == "teacher" else f"/{phrasing}"
            # a tiny model: more threads only add overhead
            out[f"bundle{tag}"] = evaluate_bundle(self.out, n=n, seed=seed, threads=1, phrasing=phrasing).summary()
            out[f"torch{tag}"] = evaluate_torch(self._last_llava(), n=n, seed=seed, phrasing=phrasing).summary()
        return out

    def run(self, start: str = "data", stop: str = "eval") -> dict[str, Any]:
        # how this bundle was made, for its manifest: one run from nothing is `from: data` into an empty work dir;
        # a restart (`--from STAGE`) or a reused work dir says so
        fresh = not self.work.exists() or not any(self.work.iterdir())
        self.report["run"] = {"from": start, "empty_work_dir": fresh}
        self.work.mkdir(parents=True, exist_ok=True)
        for name in STAGES[STAGES.index(start): STAGES.index(stop) + 1]:
            t0, c0 = time.time(), _cpu_seconds()
            log.warning("recipe: %s ...", name)
            result = getattr(self, f"stage_{name}")()
            # CPU seconds tell what a stage costs when the machine is shared (wall time then overstates it).
            result = {**result, "seconds": round(time.time() - t0, 1), "cpu_seconds": round(_cpu_seconds() - c0, 1)}
            self.report["stages"][name] = result
            log.warning("recipe: %s done in %.1fs", name, result["seconds"])
            (self.work / "recipe-report.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n",
                                                          encoding="utf-8")
        total = sum(v.get("seconds", 0) for v in self.report["stages"].values())
        self.report["total_seconds"] = round(total, 1)
        (self.work / "recipe-report.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n",
                                                      encoding="utf-8")
        return self.report


def _portable(path: Any, work: Path) -> Any:
    """A provenance path as others can read it: relative to the repository when inside it, `<work>/...` when inside
    the recipe's work dir elsewhere, else as it is."""
    if not isinstance(path, str) or not Path(path).is_absolute():
        return path
    p, repo = Path(path).resolve(), Path(__file__).resolve().parents[2]
    for base, prefix in ((repo, ""), (work.resolve(), "<work>/")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return path


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (all threads)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/llava-local-tiny", help="bundle directory to write")
    p.add_argument("--work", default="build/demo", help="work dir for data, base models and checkpoints")
    p.add_argument("--config", default=str(RECIPE_YAML), help="recipe YAML")
    p.add_argument("--scale", type=float, default=1.0, help="shrink scenes and steps (e.g. 0.2 for a trial run)")
    p.add_argument("--from", dest="start", choices=STAGES, default="data", help="first stage to run")
    p.add_argument("--to", dest="stop", choices=STAGES, default="eval", help="last stage to run")
    p.add_argument("--clip-seed", type=int, default=None, metavar="N",
                   help="seed of the vision tower's initialisation and batches (recipe.yaml clip.seed; the spread "
                        "run varies it)")
    for stage in LLAVA_STAGES:
        p.add_argument(f"--{stage}", nargs="*", default=[], metavar="key=value",
                       help=f"extra config overrides for the {stage} stage")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = load_recipe(args.config, args.scale)
        if args.clip_seed is not None:
            cfg = replace(cfg, clip=replace(cfg.clip, seed=args.clip_seed))
        overrides = {stage: getattr(args, stage) for stage in LLAVA_STAGES}
        recipe = Recipe(cfg, Path(args.work), Path(args.out), overrides)
        report = recipe.run(args.start, args.stop)
    except LlavaLocalError as e:
        print(f"recipe: error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps({k: v.get("seconds") for k, v in report["stages"].items()} | {"total": report["total_seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
