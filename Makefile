# Two commands do all the set-up on a fresh machine:
#   make run    install, then start Parley (Slack / Discord when their tokens are
#               configured, the terminal console otherwise)
#   make test   install, then run the offline test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install install-local bench lint fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# The local model builds llama.cpp from source once (about five minutes on two
# cores); pip caches the wheel, so later installs take seconds.
install-local: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  echo ">> Building the offline model runtime (llama.cpp): about 5 minutes on 2 cores, once."; \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[local]' \
	  || echo ">> The local model could not be built; Parley still runs with API providers."; }

run: install-local
	$(BIN)/parley run

test: install
	bash .ci/wheel_smoke.sh $(VENV)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
	  echo ">> llama-cpp-python is not installed: the local-model tests will be skipped (make install-local adds it)."
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check core bots tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format core bots tests bench

clean:
	rm -rf $(VENV) *.egg-info
