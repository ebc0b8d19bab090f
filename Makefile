# mimiq: `make demo` (set up + run the embedded offline task) and `make test` (set up + run the tests).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and explicitly: these pins are served from local disk on the project's machines.
# On a cluster pick the build that matches your CUDA, e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-gate test-all test-fast lint format smoke bench convergence-long bench-quick speed gpu-mini teachers clean clean-logs

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install torch + mimiq[dev] (idempotent)

demo: install ## the main job on the embedded offline mini task (python train.py), then noise + KD on the same teacher, and a table of both
	$(PY) scripts/demo.py $(ARGS)

test: install ## the test suite without the teacher-training gate (what CI runs first; < 15 min on 2 cores)
	$(PY) -m pytest -m "not gate" --durations=20 $(ARGS)

test-gate: install ## the teacher gate: trains the default mini teacher (48 epochs, ~50 min on 2 cores in fp32, uncached); CI runs it after `test`
	$(PY) -m pytest -m gate --durations=5 $(ARGS)

test-all: install ## every test, gate included
	$(PY) -m pytest $(ARGS)

test-fast: install ## tests without the slow end-to-end ones (minutes)
	$(PY) -m pytest -m "not slow and not gate" $(ARGS)

lint: install ## ruff check + ruff format --check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install ## ruff fix + format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

smoke: install ## seconds-long end-to-end debug run
	$(PY) train.py debug=tiny $(ARGS)

bench: install ## the mini benchmark at W4/A4: 8 rows x 3 seeds (PSAQ-ViT V2: 1) on ViT mini, its second teacher instance and Swin mini, after every generator's convergence curve -> results/mini/
	$(PY) scripts/convergence.py --teachers vit_mini,vit_mini.t1,swin_mini --generators real,noise,psaq,mimiq --iterations 48,96,192 --jobs 2
	$(PY) scripts/convergence.py --teachers vit_mini --generators psaq_v2 --iterations 48,96,192 --jobs 2  # ~5x MimiQ's cost per set
	$(PY) scripts/bench.py $(ARGS)

convergence-long: install ## the convergence curves' points beyond the cost cap: 384 iterations, PSAQ-ViT and MimiQ on every mini teacher -> results/mini/convergence.csv|png
	$(PY) scripts/convergence.py --teachers vit_mini,vit_mini.t1,swin_mini --generators psaq,mimiq --iterations 384 --jobs 2

speed: install ## the speed report: every step eager vs compiled, bf16, threads, bits sweep, converged set (scripts/speed.py) -> results/mini/speed.md
	$(PY) scripts/speed.py --precision fp32,bf16 --threads 1,2 --sweep --converged --profile $(ARGS)

gpu-mini: install ## one GPU: budget=gpu_mini (the paper's generator budget on the mini task), MimiQ / PSAQ-ViT + KD / noise + KD, one -m sweep -> results/mini-gpu/
	$(PY) train.py -m budget=gpu_mini device=cuda method=mimiq,psaq,noise_kd hydra.sweep.dir=results/mini-gpu $(ARGS)

bench-quick: install ## reduced benchmark: ViT mini, W4/A4, one seed, 5 rows, a smaller budget -> results/mini/
	$(PY) scripts/bench.py --quick $(ARGS)

teachers: install ## (re)make the shipped mini teachers in src/mimiq/teachers/ (trains uncached ones: 48 epochs, ~1.5 h each on 1 idle thread); ARGS=--check retrains and compares
	OMP_NUM_THREADS=1 $(PY) scripts/teachers.py $(ARGS)

clean-logs: ## remove Hydra run directories
	rm -rf logs outputs multirun

clean: clean-logs ## also remove caches (mini dataset, teachers, synthetic sets)
	rm -rf .cache .pytest_cache .ruff_cache

# Paper tables (docs/reproduce.md). `make tab-<table>` prints its commands (one per row) and runs them
# in order in the foreground: Hydra's launcher blocks until a sweep's jobs end, so `nohup make tab-imagenet LAUNCH=... &`.
LAUNCH ?=
SEEDS ?= 0,1,2
ROWS ?=
TABLE_ARGS = --seeds '$(SEEDS)' --launch '$(LAUNCH)' --extra '$(ARGS)' --rows '$(ROWS)'
.PHONY: check-configs tables tab-imagenet tab-abl_components tab-abl_distance tab-abl_images

check-configs: install ## compose every experiment x bits and every tab-* job, no compute (LAUNCH=... as for tab-*)
	$(PY) scripts/check_configs.py $(TABLE_ARGS)

tables: install ## results/<table>.csv|md from logs/**/metrics.json, next to results/paper/*.csv
	$(PY) scripts/make_tables.py --runs logs --out results

tab-imagenet: install ## paper Tab. 2: 9 models x 4 bits x 6 rows (LAUNCH=hydra/launcher=slurm ARGS=data.root=...)
	$(PY) scripts/make_tables.py --run --commands imagenet $(TABLE_ARGS)

tab-abl_components: install ## ablation: inter-head term x HSAD, ViT-B W4/A4 (as tab-imagenet)
	$(PY) scripts/make_tables.py --run --commands abl_components $(TABLE_ARGS)

tab-abl_distance: install ## ablation: HSAD distance ssim/mse/l1/kl, ViT-B W4/A4 (as tab-imagenet)
	$(PY) scripts/make_tables.py --run --commands abl_distance $(TABLE_ARGS)

tab-abl_images: install ## ablation: 1k vs 10k synthetic images, ViT-B W4/A4 (as tab-imagenet)
	$(PY) scripts/make_tables.py --run --commands abl_images $(TABLE_ARGS)

# Optional OpenMMLab extra for the dense tasks (docs/dense.md): mmengine, mmcv 2.1.0 built from source with
# ops (~58 CPU-minutes the first time, ~30 min on 2 cores; the wheel is then cached under .cache/wheels/), mmdet, mmseg.
.PHONY: install-mm test-dense
$(VENV)/.installed-mm: $(VENV)/.installed scripts/install_mm.sh
	VENV=$(VENV) scripts/install_mm.sh
	touch $@

install-mm: $(VENV)/.installed-mm ## add the optional mm extra to .venv (mmcv ops build once, then cached; idempotent)

test-dense: install-mm ## the dense-task tests only (COCO / ADE20K fixtures, tiny Swin, CPU)
	$(PY) -m pytest -m dense $(ARGS)

# Optional export extra (docs/deploy.md): onnx + onnxruntime, for the ONNX export of a finished run's student.
.PHONY: install-export export
RUN ?=
$(VENV)/.installed-export: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[export]"
	touch $@

install-export: $(VENV)/.installed-export ## add the optional export extra (onnx, onnxruntime) to .venv (idempotent)

export: install-export ## export a finished run's student (RUN=<run dir>): ONNX, packed weights, table -> RUN/export/
	@test -n "$(RUN)" || { echo "usage: make export RUN=<run dir>, e.g. RUN=logs/demo/<time>/mimiq"; exit 2; }
	$(PY) scripts/export.py $(RUN) $(ARGS)

.PHONY: tab-dense_coco tab-dense_ade
tab-dense_coco: install-mm ## dense: COCO box+mask AP, (Cascade) Mask R-CNN Swin-T/S x 3 bits x 3 rows (ARGS=task...)
	$(PY) scripts/make_tables.py --run --commands dense_coco $(TABLE_ARGS)

tab-dense_ade: install-mm ## dense: ADE20K mIoU, UperNet Swin-T/S, DeiT-S x 3 bits x 3 rows (as tab-dense_coco)
	$(PY) scripts/make_tables.py --run --commands dense_ade $(TABLE_ARGS)
