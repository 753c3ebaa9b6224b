# One-command set-up: `make test` installs everything into .venv (CPU torch first) and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-dev

.PHONY: install test clean

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

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
