# helixrun developer entry points. README.md names the two a newcomer types:
#   make demo   set up, then train the GeneChat example locally (--tiny, CPU, no cluster)
#   make test   set up, build the test control plane, fetch Prometheus, run every test
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
RUN_DIR    ?= runs/genechat

.PHONY: setup debian-packages demo test test-prerequisites test-integration test-others test-unit render images lint clean

setup: $(VENV)/.installed

# Every wheel is downloaded once, into ~/.cache/helixrun/wheelhouse, and installed from there: `make images`
# builds from the same wheels (pip's own cache keeps nothing where the index sends no cache headers).
$(VENV)/.installed: operator/pyproject.toml trainer/pyproject.toml .ci/requirements-test.txt dockerfiles/requirements-build.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3
	wheels="$$($(PY) -m tests.images.build --wheelhouse)" && \
	$(PIP) install --quiet --no-index --find-links "$$wheels" -r .ci/requirements-test.txt -e 'operator[operator,cli]' -e trainer
	touch $@

# Prometheus + promtool (observability tests) and WordNet 3.0 (METEOR): pinned Debian packages unpacked
# without root into ~/.cache/helixrun/debian/ (tests/debian says why not a Go build: seconds against minutes).
debian-packages: setup
	$(PY) -m tests.debian fetch

# The demo trains its tiny LLM fully, at 3e-3 for 80 steps: a random 64-wide Llama has no language yet for the
# example's rank-8 LoRA at 1e-4 to steer (measured: BLEU stays 0 over 40 steps even at 1e-2), and the gene ->
# description mapping takes it 50-70 steps. tests/recipes/test_genechat_parity.py runs this command.
DEMO_SETS := --set model.method=full --set model.lora=null --set training.optimizer.lr=3e-3 --set training.maxSteps=80
demo: setup debian-packages
	HELIXRUN_WORDNET_DIR="$$($(PY) -m tests.debian path wordnet)" $(VENV)/bin/helixrun-train --local -f examples/run-genechat.yaml --workdir $(RUN_DIR) --tiny $(DEMO_SETS)

render: setup
	$(VENV)/bin/helixrun render -f examples/run-genechat.yaml

test: test-prerequisites
	$(MAKE) -j2 --output-sync=line test-integration test-others

# Two pytest sessions side by side, each with control planes of its own: the kwok integration suite (both
# Kubeflow backends) mostly waits on controllers, the rest mostly computes (recipes, the real node's pods).
test-integration: setup
	$(PY) -m pytest tests/integration

test-others: setup
	$(PY) -m pytest --ignore=tests/integration

# What the tests need besides Python, made side by side: the control plane's Go build, Prometheus and WordNet,
# and the images (built, then loaded into the real node's image store, which the test node starts with).
test-prerequisites: setup
	$(MAKE) -j3 --output-sync=line cluster-bin debian-packages images

test-unit: setup
	$(PY) -m pytest -m "not cluster and not images"

# helixrun/operator:dev and helixrun/trainer:dev, built without a registry (root: starts dockerd), then
# loaded into the test cluster's real node when one is up, else into the image store the next one starts
# with (tests/images/build.py).
images: setup node-deps
	$(PY) -m tests.images.build --cluster-state $(CLUSTER_STATE)

clean: cluster-down
	rm -rf $(VENV) .cluster runs

CLUSTER_PYTHON = $(PY)
include Makefile.cluster
