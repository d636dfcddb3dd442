# `make test` and `make demo` build .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo sandbox-deps browser-deps

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

# A headless Chromium lets tests/eval open the eval report in a real browser; without it that
# test skips and says why, so a failed install is a warning, not an error.
browser-deps:
	@command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq chromium-headless-shell) >/dev/null 2>&1 || \
	    echo "warning: could not install chromium-headless-shell; the eval report browser test will skip"; }

setup: $(STAMP) sandbox-deps browser-deps

test: setup
	$(PY) -m pytest -q tests

# The main job in miniature (train/demo.py): SFT of the `demo` preset on the embedded task suite,
# GRPO with the BAT reward, greedy eval of both on held-out items; prints accuracy and tool-call
# rate on easy and hard items. About 15 minutes on a 2-core CPU. Run it again after an
# interruption and it resumes where it stopped; `rm -rf workdir/demo` starts over.
demo: setup
	$(PY) -m train.demo --workdir=workdir/demo
