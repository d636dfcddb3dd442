# `make test` and `make demo` build .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo sandbox-deps

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# bubblewrap gives the sandbox its strongest isolation; without it the sandbox falls back to
# raw namespaces + rlimits, so a failed install is a warning, not an error.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || \
	    echo "warning: could not install bubblewrap; the sandbox will use its namespace fallback"; }

setup: $(STAMP) sandbox-deps

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m codedance_jax.demo
