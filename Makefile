# stepserve: `make serve` and `make test` are the two commands a newcomer needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
MODELS  := moons-ddpm moons-fm digits-ddpm digits-fm
# Variants the knobs report compares with the defaults (schedule, target, path, net).
KNOB_MODELS := moons-ddpm-linear moons-ddpm-cosine moons-ddpm-v moons-ddpm-x0 moons-fm-vp digits-fm-mlp
# Few-step students distilled from a default model (`python -m distill`, rectified-flow reflow).
DISTILLED := moons-fm-reflow digits-fm-reflow
# The latent stage's autoencoders (`python -m training.autoencoder`): the VAE of the shapes images.
AUTOENCODERS := shapes-vae
# DiTs in the latent space of shapes-vae (trained after it; each checkpoint holds its decoder).
LATENT := shapes-latent-fm shapes-latent-ddpm

CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: install browser test test-fast bench knobs train profile export lint format serve cluster-demo clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# --no-compile: no .pyc for every installed file up front (torch, ray: most are never imported); Python
# writes them on first import. Half the install time on a 2-core machine (33 s against 80 s).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev,locust]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install pinned dependencies (CPU torch)

serve: install  ## serve the default models on http://127.0.0.1:8000 (local Ray; trains missing models first)
	scripts/serve.sh

cluster-demo: install  ## a 3-node Ray cluster on this machine (head + 2 workers), the app deployed with `serve deploy`; Ctrl-C stops it
	scripts/cluster_demo.sh

# The playground's browser test drives Debian's Chromium (never a downloaded build): installed here as root;
# otherwise one line says how, and the browser test fails naming it.
browser:  ## Debian's chromium and chromium-driver for the playground's browser test (apt-get, as root)
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	else echo "browser: $(CHROMIUM) or $(CHROMEDRIVER) missing; run 'sudo apt-get install -y chromium chromium-driver' (the playground's browser test fails without them)"; fi

test: install browser  ## the whole test suite, slow end-to-end tests included
	$(BIN)/pytest -q tests

test-fast: install  ## unit tests only (no Ray, no long training)
	$(BIN)/pytest -q -m "not slow" tests

export: install  ## export the four default models to ONNX (net-ema.onnx in models/<name>, hash in its manifest)
	@for m in $(MODELS); do $(PYTHON) -m export --checkpoint models/$$m --format onnx || exit 1; done

lint: install  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: install  ## train the default models and the knob variants into models/, distill the students, train the VAE and the latent models
	@for m in $(MODELS) $(KNOB_MODELS); do $(PYTHON) -m training --config configs/$$m.yaml --out models/$$m || exit 1; done
	@for m in $(DISTILLED); do $(PYTHON) -m distill --config configs/$$m.yaml --out models/$$m || exit 1; done
	@for m in $(AUTOENCODERS); do $(PYTHON) -m training.autoencoder --config configs/$$m.yaml --out models/$$m || exit 1; done
	@for m in $(LATENT); do $(PYTHON) -m training --config configs/$$m.yaml --out models/$$m || exit 1; done
	@$(MAKE) --no-print-directory profile  # new weights make the old profiles stale

profile: install  ## measure the default models', the students' and the latent models' quality profiles (quality_profile.json in models/<name>)
	@for m in $(MODELS) $(DISTILLED) $(LATENT); do $(PYTHON) -m serving profile --checkpoint models/$$m || exit 1; done

bench: install  ## benchmarks; JSON into bench-results/
	$(PYTHON) -m bench --out bench-results

knobs: install  ## the knobs report: docs/knobs.md and docs/img/knobs-*.png from the committed models
	$(PYTHON) -m bench.knobs --models models --out docs

clean:
	rm -rf bench-results .pytest_cache
