# Two commands on a fresh machine:
#   make study   -- create the Python environment if missing, then run the default (toy) study
#   make test    -- the same environment, then lint and the test suite
#   make test-slurm -- the tests on a real one-node SLURM cluster (root; installs SLURM with apt)
#   make test-studies -- the toy study files of workflow/studies end to end, their findings asserted
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Torch's OpenMP threads spin for a while before sleeping. Where processes share cores (CI runs the
# SLURM tests beside the others; the sharded tests run two processes on two cores) each then burns the
# others' time: two 2-thread toy trainings side by side took 57 s each against 7 s alone. A short spin
# keeps a lone process's speed (7.1 s) and shares cores fairly (12 s each side by side).
export GOMP_SPINCOUNT ?= 1000
SNAKEMAKE_ARGS ?=
# The study to run: config.yaml (the toy study) or a file of workflow/studies/.
STUDY ?= config.yaml

.PHONY: study test test-slurm test-studies env lint
study: $(VENV)/.installed
	snakemake --configfile $(STUDY) $(SNAKEMAKE_ARGS)

test: $(VENV)/.installed
	ruff check src tests
	ruff format --check src tests
	snakefmt --check Snakefile workflow/rules
	snakemake --lint --configfile config.yaml
	snakemake --lint --configfile workflow/studies/amuro-char-olmo1b.yaml
	snakemake --lint --configfile workflow/studies/toy-axes.yaml
	snakemake --lint --configfile workflow/studies/toy-learning-dynamics.yaml
	snakemake --lint --configfile workflow/studies/learning-dynamics-pythia410m.yaml
	snakemake --lint --configfile workflow/studies/toy-lpft.yaml
	snakemake --lint --configfile workflow/studies/lpft-roberta-base.yaml
	snakemake --lint --configfile workflow/studies/toy-mechanistic.yaml
	snakemake --lint --configfile workflow/studies/mechanistic-pcfg.yaml
	pytest -q --durations=10 -m "not slurm and not study"

# SLURM and munge from Debian's packages when missing and we are root (CI is); the tests skip,
# saying why, where they cannot be installed or started.
test-slurm: $(VENV)/.installed
	command -v slurmctld >/dev/null || [ "$$(id -u)" != 0 ] || sh tests/helpers/slurm/install.sh
	pytest -q -s --durations=5 -m slurm

test-studies: $(VENV)/.installed
	pytest -q -s --durations=5 -m study

env: $(VENV)/.installed

# torch is pinned to the CPU build that pip finds locally (and on a GPU node, the CUDA build); pip
# installs it first, as uv does not look in pip's local wheel folder. uv installs the rest, faster
# than pip; it compiles bytecode at install time, as pip does, since every workflow job is a new
# interpreter and PYTHONDONTWRITEBYTECODE may be set (it is here: without, imports took 2x longer).
TORCH := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" uv==0.13.8
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/uv pip install --quiet --compile-bytecode -e ".[dev]"
	touch $@
