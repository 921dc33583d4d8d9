# PiTe: `make annotate` (set up, then annotate the embedded demo) and `make test` are the two commands to know.
SHELL := /bin/bash
# 3.11 serves torch from this team's local disk; 3.12 and 3.13 work too (torch then comes from the registry).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-setup
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k video"`.
PYTEST_ARGS ?=

.PHONY: setup test annotate lock clean-venv

# Idempotent: the stamp is rebuilt only when the dependency files change.
setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/lock.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $@

test: setup cotracker
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# CoTracker3 is not on the registry and is CC-BY-NC: installed from the team's checkout beside this repo when it is
# there (never copied in), so the real-tracker tests run; elsewhere they skip.
COTRACKER_SRC ?= ../shared/third_party/co-tracker
.PHONY: cotracker
cotracker: setup
	@if $(PY) -c "import cotracker" 2>/dev/null; then :; \
	elif [ -d "$(COTRACKER_SRC)" ]; then \
		$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$(COTRACKER_SRC)"; \
	else echo "make cotracker: no checkout at $(COTRACKER_SRC): clone facebookresearch/co-tracker and give" \
		"COTRACKER_SRC=DIR (the real-tracker tests skip without it)"; fi

# Generate the synthetic demo set (256 clips) if missing, annotate it on a local Ray, print where the outputs are.
annotate: setup
	$(PY) -m pipelines.annotate --config configs/annotate/demo.yaml $(ARGS)
	$(PY) -m pipelines.inspect runs/annotate/demo

# Train the tiny demo model (three stages on CPU) on the demo annotation (made first when missing), then the
# held-out trajectory check: runs/train/demo/{final,eval.json}.
.PHONY: train
train: setup
	@test -f runs/annotate/demo/stats.json || $(PY) -m pipelines.annotate --config configs/annotate/demo.yaml
	$(PY) -m pipelines.train --config configs/train/demo.yaml $(ARGS)

# Re-resolve the pinned versions after changing pyproject.toml's dependencies.
lock: setup
	$(PY) -m pip freeze --all --exclude-editable | grep -v -e '^-e' -e '^pip==' > requirements/lock.txt

clean-venv:
	rm -rf $(VENV)

# Evaluate the demo checkpoint (`make train` makes it when missing) on held-out synthetic clips: temporal grounding,
# dense captioning and trajectory accuracy beside baselines, and a PNG of predicted vs ground-truth trajectories.
.PHONY: eval
eval: setup
	@test -f runs/train/demo/final/pite.json || $(MAKE) train
	$(PY) -m pipelines.evaluate.bench --checkpoint runs/train/demo/final --out runs/eval/demo $(ARGS)

# The ablation grid (configs/ablation/demo.yaml): 4 variants x 3 seeds on the demo world, about 70 CPU minutes;
# runs/ablation/demo/{results.jsonl,summary.md,ablation.png}. A rerun continues where it stopped.
.PHONY: ablation
ablation: setup
	@test -f runs/annotate/demo/stats.json || $(PY) -m pipelines.annotate --config configs/annotate/demo.yaml
	$(PY) -m pipelines.ablate --config configs/ablation/demo.yaml $(ARGS)
