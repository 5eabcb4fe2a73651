# vqct — every target sets itself up from nothing (a fresh clone has no .venv).
#   make demo   generate shapes shards and train the VQCT recipe (2 Ray workers, ZeRO-2, CPU)
#   make demo-stage2  the demo's tokenizer -> code shards -> a caption generator -> a sample grid
#   make compare  the five shapes recipes under the same settings, each evaluated, then a table
#                 (DATA=scenes: the five scenes recipes on the scenes world)
#   make capacity vqgan_scenes with 1,024 and with 64 codes over three seeds
#   make downstream  VQA and captioning over each scenes tokenizer's frozen codes, then a table
#   make test   the whole test suite
#   make gpu-wheels, then make bench-gpu on a GPU machine: the GPU benchmarks in one command
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
SCENES_DATA ?= data/scenes
SCENES_PARSER ?= parsers/scenes64.pt
# make compare: the five recipes of DATA (shapes or scenes) over SEEDS with the same steps, image
# size and codebook capacity (shapes: 256 codes, vqgan_shapes' 256 = vqct_shapes' 128 adjectives
# + 128 nouns; scenes: 1,024 = 512 + 512), each run followed by vqct eval on the held-out
# shards, then one table of mean ± sd per recipe. Finished runs are kept and a stopped one goes
# on from its last checkpoint: rerun to resume.
DATA ?= shapes
SEEDS ?= 0 1 2
ifeq ($(DATA),scenes)
COMPARE_DATA := $(SCENES_DATA)
COMPARE_RECIPES ?= vqgan_scenes vqct_scenes lgvq_scenes vqct_lgvq_scenes vqct_vlt_scenes
COMPARE_ARGS ?=
COMPARE_OUT ?= runs/compare-scenes
COMPARE_NEEDS := $(SCENES_DATA)/manifest.json $(SCENES_PARSER)
COMPARE_EVAL_ARGS := --parser $(SCENES_PARSER)
else ifeq ($(DATA),shapes)
COMPARE_DATA := $(DEMO_DATA)
COMPARE_RECIPES ?= vqgan_shapes vqct_shapes lgvq_shapes vqct_lgvq_shapes vqct_vlt_shapes
COMPARE_ARGS ?= trainer.max_steps=800 data.image_size=32
COMPARE_OUT ?= runs/compare
COMPARE_NEEDS := $(DEMO_DATA)/manifest.json
COMPARE_EVAL_ARGS :=
else
$(error DATA=$(DATA): give DATA=shapes or DATA=scenes)
endif
# make capacity: vqgan_scenes with CAPACITY_CODES codes over SEEDS (the scenes set must need
# its 1,024 codes: docs/results.md, "Scenes").
CAPACITY_CODES ?= 1024 64
# make downstream: in two passes over the tokenizers of make compare DATA=scenes, seed 0 of every
# recipe first (a stopped run already compares them all), the cheap tasks before the dear ones:
# (1) code sets of the scenes' train, val, test and test_compositional -> vqct downstream vqa and
# caption at the same seed and settings, then the ceiling row: the same models on ground-truth
# codes (vqct downstream truth); (2) each tokenizer's two generators and the generation tasks
# (three quarters of the time) -> one table (docs/downstream.md). Finished runs are kept: rerun
# to resume. Each step prints a UTC timestamp.
DOWNSTREAM_RECIPES ?= vqgan_scenes vqct_scenes lgvq_scenes vqct_lgvq_scenes vqct_vlt_scenes
DOWNSTREAM_TASKS ?= vqa caption
# the generation tasks: per tokenizer a caption generator (t2i, relations, completion,
# unconditional) and a segmentation one (semantic), generator_scenes at GENERATOR_ARGS, judged by
# SCENES_PARSER
# (semantic first: the longest, so that the two-at-a-time steps below end together; empty: no
# generators, the first pass and the ground-truth rows alone)
DOWNSTREAM_GENERATION ?= semantic t2i relations completion unconditional
# bf16 (the matrix products; weights and optimizer state fp32): 1.3-1.4x the fp32 step on
# AVX-512 BF16 cores at the same losses (docs/results.md)
GENERATOR_ARGS ?= trainer.precision=bf16
SAMPLE_ARGS ?= --top-k 64 --cfg-scale 2
DOWNSTREAM_SETTINGS ?= precision=bf16
DOWNSTREAM_OUT ?= runs/downstream
DOWNSTREAM_CODES ?= codes/scenes

.PHONY: setup cluster-tools demo demo-stage2 compare capacity downstream gpu-wheels bench-gpu test test-fast clean

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

# make demo-stage2: the demo's tokenizer (the newest runs/vqct_shapes-*) -> code shards -> a
# caption-conditioned generator -> a grid of samples (README, "Stage 2"; docs/generation.md).
DEMO_RUN ?= $(shell ls -td runs/vqct_shapes-* 2>/dev/null | head -1)
DEMO_CAPTION ?= a large red circle
demo-stage2: $(STAMP) $(DEMO_DATA)/manifest.json
	@test -n "$(DEMO_RUN)" || { echo "no runs/vqct_shapes-* here: run make demo first"; exit 2; }
	$(VENV)/bin/vqct data tokenize $(DEMO_RUN) $(DEMO_DATA)/train --out codes/shapes/train
	$(VENV)/bin/vqct data tokenize $(DEMO_RUN) $(DEMO_DATA)/val --out codes/shapes/val
	set -o pipefail; $(VENV)/bin/vqct train generator_shapes | tee runs/generator_shapes-demo.json
	$(VENV)/bin/vqct generate $$($(PY) -c 'import sys; from vqct.records.command_output import read_last_json; print(read_last_json(sys.argv[1])["run_name"])' runs/generator_shapes-demo.json) \
	  --caption "$(DEMO_CAPTION)" -n 16 --top-k 64 --cfg-scale 2 --out runs/generator_shapes-demo.png

$(SCENES_DATA)/manifest.json: | $(STAMP)
	$(VENV)/bin/vqct data scenes --out $(SCENES_DATA) --num-samples 20000 --val 1000 --image-size 64 --seed 0

# The judge of object shapes in vqct eval (docs/data.md, "The scene parser").
$(SCENES_PARSER): | $(STAMP) $(SCENES_DATA)/manifest.json
	$(VENV)/bin/vqct parser --data $(SCENES_DATA)/train --val $(SCENES_DATA)/test --out $@

# train_eval OUT RECIPE ARGS DATA EVAL_ARGS RUN: train RECIPE as run RUN (under the default
# trainer.storage_path) unless OUT.json already names its final checkpoint, then evaluate on
# DATA's held-out shards unless OUT.eval.json exists. A run that was stopped part way (the
# machine went away, Ctrl-C) is resumed from its last checkpoint, not started again; one killed
# before its run record was written is refused in one line ("already exists": remove its directory).
define train_eval
test -s $(1).eval.json || { \
  { $(PY) -c '$(LAST_CHECKPOINT)' $(1).json >/dev/null 2>&1 || { \
    resume=; test -f $(RUN_STORAGE)/$(6)/vqct_run.json && resume=trainer.resume=true; \
    $(VENV)/bin/vqct train $(2) $(3) trainer.run_name=$(6) $$resume | tee $(1).json; }; } && \
  checkpoint=$$($(PY) -c '$(LAST_CHECKPOINT)' $(1).json) && \
  $(VENV)/bin/vqct eval $$checkpoint --data $(4)/val $(5) | tee $(1).eval.json; }
endef
RUN_STORAGE := runs
# prints "<UTC time> downstream <what>": make downstream's log gives each step's time
downstream_step = echo "$$(date -u +%FT%TZ) downstream $(1)"
# Two at a time, one thread each: on 2 cores two one-thread downstream processes do about 1.5x
# the work of one two-thread process (these models are too small for two threads to share).
# `$(slot_taken)` after each `CMD &`; `$(slots_drained)` after the loop; n=0 before it.
slot_taken = n=$$((n+1)); test $$n -lt 2 || { wait -n || exit 1; n=$$((n-1)); }
slots_drained = while test $$n -gt 0; do wait -n || exit 1; n=$$((n-1)); done
# prints the final checkpoint a `vqct train` output names; fails where it names none
LAST_CHECKPOINT := import sys; from vqct.records.command_output import read_last_json; c = read_last_json(sys.argv[1]).get("checkpoint"); print(c) if c else sys.exit(1)

compare: $(STAMP) $(COMPARE_NEEDS)
	@mkdir -p $(COMPARE_OUT)
	set -o pipefail; for r in $(COMPARE_RECIPES); do for s in $(SEEDS); do \
	  $(call train_eval,$(COMPARE_OUT)/$$r-seed$$s,$$r,seed=$$s $(COMPARE_ARGS),$(COMPARE_DATA),$(COMPARE_EVAL_ARGS),$(notdir $(COMPARE_OUT))-$$r-seed$$s) || exit 1; \
	done; done
	$(VENV)/bin/vqct compare $(foreach r,$(COMPARE_RECIPES),$(foreach s,$(SEEDS),$(COMPARE_OUT)/$(r)-seed$(s).json))

capacity: $(STAMP) $(SCENES_DATA)/manifest.json $(SCENES_PARSER)
	@mkdir -p runs/capacity
	set -o pipefail; for s in $(SEEDS); do for k in $(CAPACITY_CODES); do \
	  $(call train_eval,runs/capacity/codes$$k-seed$$s,vqgan_scenes,seed=$$s quantizer.codebook_size=$$k,$(SCENES_DATA),--parser $(SCENES_PARSER),capacity-codes$$k-seed$$s) || exit 1; \
	done; done
	$(VENV)/bin/vqct compare $(foreach s,$(SEEDS),$(foreach k,$(CAPACITY_CODES),runs/capacity/codes$(k)-seed$(s).json))

downstream: $(STAMP) $(SCENES_DATA)/manifest.json $(SCENES_PARSER)
	@mkdir -p $(DOWNSTREAM_OUT)
	set -o pipefail; for s in $(SEEDS); do for r in $(DOWNSTREAM_RECIPES); do \
	  run=runs/compare-scenes/$$r-seed$$s.json; codes=$(DOWNSTREAM_CODES)/$$r-seed$$s; \
	  test -s $$run || { echo "no $$run: run make compare DATA=scenes first"; exit 2; }; \
	  checkpoint=$$($(PY) -c '$(LAST_CHECKPOINT)' $$run) || exit 1; \
	  $(call downstream_step,$$r seed $$s: code sets); \
	  for split in train val test test_compositional; do \
	    $(VENV)/bin/vqct data tokenize $$checkpoint $(SCENES_DATA)/$$split --out $$codes/$$split >/dev/null || exit 1; \
	  done; \
	  n=0; for t in $(DOWNSTREAM_TASKS); do out=$(DOWNSTREAM_OUT)/$$r-seed$$s-$$t.json; test -s $$out && continue; \
	    $(call downstream_step,$$r seed $$s: $$t); \
	    { OMP_NUM_THREADS=1 $(VENV)/bin/vqct downstream $$t $$codes/train --eval $$codes/test \
	      --eval $$codes/test_compositional seed=$$s $(DOWNSTREAM_SETTINGS) > $$out.tmp && mv $$out.tmp $$out; } & \
	    $(slot_taken); \
	  done; $(slots_drained); \
	done; done
	for split in train test test_compositional; do test -s $(DOWNSTREAM_CODES)/truth/$$split/manifest.json || \
	  $(VENV)/bin/vqct downstream truth $(SCENES_DATA)/$$split --out $(DOWNSTREAM_CODES)/truth/$$split >/dev/null || exit 1; done
	n=0; for s in $(SEEDS); do for t in $(DOWNSTREAM_TASKS); do \
	  out=$(DOWNSTREAM_OUT)/truth-seed$$s-$$t.json; codes=$(DOWNSTREAM_CODES)/truth; test -s $$out && continue; \
	  $(call downstream_step,truth seed $$s: $$t); \
	  { OMP_NUM_THREADS=1 $(VENV)/bin/vqct downstream $$t $$codes/train --eval $$codes/test \
	    --eval $$codes/test_compositional seed=$$s features=indices $(DOWNSTREAM_SETTINGS) > $$out.tmp && mv $$out.tmp $$out; } & \
	  $(slot_taken); \
	done; done; $(slots_drained)
	set -o pipefail; test -z "$(strip $(DOWNSTREAM_GENERATION))" || \
	for s in $(SEEDS); do for r in $(DOWNSTREAM_RECIPES); do codes=$(DOWNSTREAM_CODES)/$$r-seed$$s; \
	  for cond in caption segmentation; do gen=$(DOWNSTREAM_OUT)/$$r-seed$$s-generator-$$cond.json; test -s $$gen && continue; \
	    $(call downstream_step,$$r seed $$s: $$cond generator); \
	    extra="$$(test $$cond = segmentation && echo condition.name=segmentation '~condition.tokens') \
	      $$(test -f $(RUN_STORAGE)/downstream-$$r-seed$$s-$$cond/vqct_run.json && echo trainer.resume=true)"; \
	    $(VENV)/bin/vqct train generator_scenes data.train_codes=$$codes/train \
	      data.val_codes=$$codes/val seed=$$s trainer.run_name=downstream-$$r-seed$$s-$$cond $$extra $(GENERATOR_ARGS) \
	      | tee $$gen.tmp && mv $$gen.tmp $$gen || exit 1; \
	  done; \
	  n=0; for t in $(DOWNSTREAM_GENERATION); do out=$(DOWNSTREAM_OUT)/$$r-seed$$s-$$t.json; test -s $$out && continue; \
	    $(call downstream_step,$$r seed $$s: $$t); \
	    cond=$$(test $$t = semantic && echo segmentation || echo caption); \
	    scenes=$$(test $$t = completion && echo "--scenes $(SCENES_DATA)/test"); \
	    { OMP_NUM_THREADS=1 $(VENV)/bin/vqct downstream $$t runs/downstream-$$r-seed$$s-$$cond --eval $$codes/test \
	      --parser $(SCENES_PARSER) --real $(SCENES_DATA)/val --out samples/scenes/$$r-seed$$s/$$t --seed $$s $$scenes \
	      $(SAMPLE_ARGS) > $$out.tmp && mv $$out.tmp $$out; } & \
	    $(slot_taken); \
	  done; $(slots_drained); \
	done; done
	$(VENV)/bin/vqct downstream table $(foreach r,$(DOWNSTREAM_RECIPES) truth,$(foreach s,$(SEEDS),$(foreach t,$(DOWNSTREAM_TASKS),$(DOWNSTREAM_OUT)/$(r)-seed$(s)-$(t).json))) \
	  $(foreach r,$(DOWNSTREAM_RECIPES),$(foreach s,$(SEEDS),$(foreach t,$(DOWNSTREAM_GENERATION),$(DOWNSTREAM_OUT)/$(r)-seed$(s)-$(t).json)))

# make gpu-wheels (here), then make bench-gpu on a GPU machine with .whl carried there: `vqct bench
# suite`, every GPU benchmark in one command, its JSON lines in BENCH_GPU_OUT (docs/performance.md,
# "On a GPU machine"). The GPU image holds torch, triton, transformers and pytest (Python 3.12);
# GPU_WHEELS is what it lacks, at the versions tested here. DeepSpeed and antlr4 (hydra's parser)
# come as source only, pure Python: built here into wheels any Python 3 takes.
GPU_WHEELS ?= hydra-core==1.3.8 omegaconf==2.3.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 hjson==3.1.0 vector-quantize-pytorch==1.34.1 einx==0.4.3 loguru==0.8.0 frozendict==2.5.1 \
  torch-einops-utils==0.2.9
GPU_PYTHON ?= python3
BENCH_GPU_OUT ?= $(if $(OUT),$(OUT),runs)/bench-gpu.jsonl
BENCH_GPU_ARGS ?=

gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w .whl $(DEEPSPEED_SPEC) \
	  antlr4-python3-runtime==4.9.3
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@du -sh .whl

bench-gpu:
	test ! -d .whl || $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target /tmp/vqct-site .whl/*.whl
	PYTHONPATH=$(CURDIR)/framework:$(CURDIR)/kernels:/tmp/vqct-site $(GPU_PYTHON) -m vqct bench suite \
	  --out $(BENCH_GPU_OUT) $(BENCH_GPU_ARGS)

# The SLURM tests start a one-node cluster from Debian's slurm-wlm (daemons on 127.0.0.1); the team
# tracking-server test a PostgreSQL server (Debian's postgresql).
cluster-tools:
	@command -v slurmctld >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing slurm-wlm for the SLURM tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null; }; \
	  else echo "note: slurm-wlm is missing and cannot be installed here: the SLURM tests will be skipped"; fi; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing postgresql for the team tracking-server test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }; \
	  else echo "note: PostgreSQL is missing and cannot be installed here: the team tracking-server test will be skipped"; fi; }

test: $(STAMP) cluster-tools
	$(PY) -m pytest tests --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not e2e"

clean:
	rm -rf runs mlflow.db mlartifacts data/shapes data/scenes parsers codes samples .pytest_cache
