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
DEV_BUNDLE := bundles/dev-tiny

.PHONY: install chat test lint bench demo-model dev-bundle sysdeps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_DEV)
	$(PIP) install -q -e '.[convert,train,dev]'
	touch $(STAMP)

install: $(STAMP)

# tmux drives the terminal-app test like a person would; install it when we can (root on Debian/Ubuntu).
sysdeps:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq tmux >/dev/null; \
	  else echo "note: install tmux to run the terminal-app test"; fi; }

# Until the shipped demo model exists, chat uses a small bundle converted from a random tiny checkpoint.
$(DEV_BUNDLE)/manifest.json: | $(STAMP)
	$(PY) -m converters.dev_bundle $(DEV_BUNDLE)

dev-bundle: $(DEV_BUNDLE)/manifest.json

chat: $(STAMP) $(DEV_BUNDLE)/manifest.json
	$(VENV)/bin/llava-local chat --model $(DEV_BUNDLE) $(IMAGE)

test: $(STAMP) sysdeps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) bundles bench-out .pytest_cache
