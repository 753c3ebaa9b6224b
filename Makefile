# One-command set-up: `make test` installs everything into .venv (CPU torch first) and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-dev

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU PyTorch first, or pip pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'pytest collected no tests: failing' >&2; fi; exit $$rc

# The main job on the example folder: index examples/docs into the local store (incremental: a second
# `make demo` finds every file unchanged), then search it.
DEMO    = HF_HUB_OFFLINE=1 $(VENV)/bin/lganna-rag
DEMO_AT = --path .lganna --collection demo

demo: $(STAMP)
	$(DEMO) index examples/docs $(DEMO_AT)
	$(DEMO) search "how hot should the water be for green tea?" $(DEMO_AT) -k 2
	$(DEMO) search "my pods keep restarting when the database is down" --hybrid $(DEMO_AT) -k 2

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
