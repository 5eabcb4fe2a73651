# vqct — every target sets itself up from nothing (a fresh clone has no .venv).
#   make demo   generate shapes shards and train the VQCT recipe (2 Ray workers, ZeRO-2, CPU)
#   make compare  the five shapes recipes under the same settings, each evaluated, then a table
#   make test   the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vqct-setup
# torch is chosen before anything that depends on it (lpips and torch-fidelity pull
# torchvision, which pulls a torch build of its own otherwise). Override on other platforms,
# e.g. make setup TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEEPSPEED_SPEC ?= deepspeed==0.19.8
PIP := $(PY) -m pip install --disable-pip-version-check -q

# Offline, loopback-only defaults for local runs, tests and CI.
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONUNBUFFERED ?= 1

DEMO_DATA ?= data/shapes
DEMO_ARGS ?=
# make compare: the five shapes recipes over SEEDS with the same steps, image size and codebook
# capacity (256 codes: vqgan_shapes' 256 = vqct_shapes' 128 adjectives + 128 nouns), each run
# followed by vqct eval on the held-out shards, then one table of mean ± sd per recipe.
COMPARE_RECIPES ?= vqgan_shapes vqct_shapes lgvq_shapes vqct_lgvq_shapes vqct_vlt_shapes
SEEDS ?= 0 1 2
COMPARE_ARGS ?= trainer.max_steps=800 data.image_size=32

.PHONY: setup cluster-tools demo compare test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SPEC)
	$(PIP) setuptools wheel
	# DeepSpeed is a source distribution: build it against the torch above, not a second one.
	$(PIP) --no-build-isolation $(DEEPSPEED_SPEC)
	$(PIP) -e '.[test]'
	@touch $(STAMP)

$(DEMO_DATA)/manifest.json: | $(STAMP)
	$(VENV)/bin/vqct data shapes --out $(DEMO_DATA) --num-samples 4096 --samples-per-shard 256 --image-size 32 --seed 0

demo: $(STAMP) $(DEMO_DATA)/manifest.json
	$(VENV)/bin/vqct train vqct_shapes $(DEMO_ARGS)

compare: $(STAMP) $(DEMO_DATA)/manifest.json
	@mkdir -p runs/compare
	set -o pipefail; for r in $(COMPARE_RECIPES); do for s in $(SEEDS); do \
	  out=runs/compare/$$r-seed$$s; \
	  test -s $$out.eval.json && continue; \
	  $(VENV)/bin/vqct train $$r seed=$$s $(COMPARE_ARGS) | tee $$out.json || exit 1; \
	  checkpoint=$$($(PY) -c 'import sys; from vqct.records.command_output import read_last_json; print(read_last_json(sys.argv[1])["checkpoint"])' $$out.json); \
	  $(VENV)/bin/vqct eval $$checkpoint --data $(DEMO_DATA)/val | tee $$out.eval.json || exit 1; \
	done; done
	$(VENV)/bin/vqct compare $(foreach r,$(COMPARE_RECIPES),$(foreach s,$(SEEDS),runs/compare/$(r)-seed$(s).json))

# The SLURM tests start a one-node cluster from Debian's slurm-wlm (daemons on 127.0.0.1).
cluster-tools:
	@command -v slurmctld >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing slurm-wlm for the SLURM tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null; }; \
	  else echo "note: slurm-wlm is missing and cannot be installed here: the SLURM tests will be skipped"; fi; }

test: $(STAMP) cluster-tools
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not e2e"

clean:
	rm -rf runs mlflow.db mlartifacts data/shapes .pytest_cache
