# llava-local developer entry points. Two commands set everything up on a fresh machine:
#   make chat   - create .venv, install (llama-cpp-python compiles from source), chat with the default model
#   make test   - the same install, then the whole test suite
# Both are idempotent: a second run skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# CPU build of torch for development and tests (the package itself does not pin torch: GPU users need CUDA builds).
TORCH_DEV := torch==2.13.0
# llama.cpp backends: CPU by default; e.g. make install CMAKE_ARGS="-DGGML_CUDA=on" (Metal is automatic on macOS).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
IMAGE ?= examples/shapes.png

.PHONY: install chat test fuzz lint bench bench-quick bench-gpu bench-data demo-model demo-model-spread scienceqa-demo train-tiny data-demo sysdeps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_DEV)
	$(PIP) install -q -e '.[convert,train,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# tmux drives the terminal-app test like a person would; install it when we can (root on Debian/Ubuntu).
sysdeps:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq tmux >/dev/null; \
	  else echo "note: install tmux to run the terminal-app test"; fi; }

# Chat with the default model: the shipped demo bundle (models/llava-local-tiny) unless LLAVA_LOCAL_MODEL
# or an installed bundle named `default` says otherwise. MODEL=path/or/name picks another one.
chat: $(STAMP)
	$(VENV)/bin/llava-local chat $(if $(MODEL),--model $(MODEL)) $(IMAGE)

# Rebuild the demo model from nothing with the project's own recipe, in one run (wall time on 2 CPU cores:
# docs/demo-model.md, Time). The work dir is cleared first, so nothing of an earlier run is reused. The run is also
# the spread's run of the recipe's clip seed: its record (report, file digests) goes to docs/demo-model-runs.
demo-model: $(STAMP)
	rm -rf build/demo
	$(PY) -m training.demo.recipe --out models/llava-local-tiny --work build/demo
	$(PY) -m training.demo.spread --record build/demo --bundle models/llava-local-tiny --records docs/demo-model-runs

# The recipe's spread across vision-tower seeds (not in CI): three whole runs from nothing, then clip seed 0 again
# to check that a rerun is byte-identical; prints mean and range per question type and phrasing split.
# A seed whose run finished before is read, not run again (rm -rf build/demo-spread to start over); each finished
# run leaves its report and file digests in docs/demo-model-runs, which stand in for its work dir once that is gone.
SPREAD_SEEDS ?= 0 1 2
SPREAD_RERUN ?= $(firstword $(SPREAD_SEEDS))
demo-model-spread: $(STAMP)
	$(PY) -m training.demo.spread --seeds $(SPREAD_SEEDS) --rerun $(SPREAD_RERUN) --work build/demo-spread \
	  --records docs/demo-model-runs

# ScienceQA on the synthetic release with the demo model after a tiny fine-tune (docs/scienceqa.md); needs the
# demo recipe's checkpoint (make demo-model leaves it in build/demo/polish).
scienceqa-demo: $(STAMP)
	test -d build/demo/polish || { echo "build/demo/polish is missing: run make demo-model first"; exit 1; }
	rm -rf build/sqa
	$(VENV)/bin/llava-local data synth-scienceqa --n 700 --seed 1 --size 96 -o build/sqa/release
	$(VENV)/bin/llava-local data scienceqa --base-dir build/sqa/release --split train -o build/sqa/train-QCM-LEA.json
	$(VENV)/bin/llava-local train demo-scienceqa
	$(VENV)/bin/llava-local convert build/sqa/demo-scienceqa -o build/sqa/bundle --quant q8_0 --name demo-scienceqa --force
	$(VENV)/bin/llava-local eval scienceqa build/sqa/bundle --base-dir build/sqa/release --split test \
	  --prompt-format QCM-LEA --no-instruction --max-tokens 160 -o build/sqa/test-QCM-LEA.jsonl
	$(VENV)/bin/llava-local eval scienceqa build/sqa/bundle --base-dir build/sqa/release --split test \
	  -o build/sqa/test-CQM-A.jsonl

# Tiny two-stage training on CPU: random base models, synthetic data, stage 1, stage 2, a bundle.
train-tiny: $(STAMP)
	rm -rf build/tiny runs/tiny-stage1 runs/tiny-stage2
	$(PY) -c "from training.tiny import make_tiny_base_models as m; m('build/tiny/base')"
	$(VENV)/bin/llava-local data synth --n 64 --size 56 -o build/tiny/data --quiet
	$(VENV)/bin/llava-local train tiny-stage1
	$(VENV)/bin/llava-local train tiny-stage2
	$(VENV)/bin/llava-local convert runs/tiny-stage2 -o bundles/tiny-trained --force

# The synthetic shapes world: 10,000 scenes with images, COCO files, stage-1/2 JSON and eval questions.
data-demo: $(STAMP)
	$(VENV)/bin/llava-local data synth --n 10000 --seed 0 -o data/shapes

test: $(STAMP) sysdeps
	$(PY) -m pytest -q

# The property-based tests (tests/fuzz) with 1,000 examples each instead of make test's 30 (docs/reliability.md);
# failures found are kept in .hypothesis/ and replayed first on the next run.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz LLAVA_LOCAL_THREADS=1 $(PY) -m pytest -q tests/fuzz

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Benchmarks live in bench/ (docs/benchmarks.md says how to read them); bench-out/ caches their models and data.
# make bench: decode and image encode on a ~270M LLaVA with a CLIP ViT-L tower (engine vs raw llama.cpp vs
# transformers, ONNX vs torch, the runtime's defaults with llama.cpp's repack buffers on vs off); writes
# docs/benchmarks.md. Extra flags: BENCH_ARGS="--threads 1 --repeats 5".
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.serve   # its own section at the end of docs/benchmarks.md

# The same on a tiny model in a minute, written to bench-out/quick.md (a smoke test of the bench itself).
bench-quick: $(STAMP)
	$(PY) -m bench --quick --report bench-out/quick.md $(BENCH_ARGS)

# GPU training throughput: a few FSDP2 stage-2 steps of a ~1B LLaVA (needs a GPU; torchrun for several).
bench-gpu: $(STAMP)
	$(PY) -m bench.gpu_train --steps 8 $(BENCH_ARGS)

# Synthetic data generation: 10,000 scenes, every answer re-checked (docs/data.md).
bench-data: $(STAMP)
	$(PY) -m bench.datagen --n 10000 -o bench-out/shapes $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bundles bench-out build runs .pytest_cache
