# The README's commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= synthetic
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys demo --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# pecanpy (the walk baseline) pins numpy<2, so it lives in a venv of its own.
PECANPY := .venv-pecanpy/.installed
$(PECANPY):
	@test -x .venv-pecanpy/bin/python || $(PYTHON) -m venv .venv-pecanpy
	.venv-pecanpy/bin/python -m pip install --quiet --disable-pip-version-check pecanpy==2.0.9
	@touch $(PECANPY)

bench: $(STAMP) $(PECANPY)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .venv-pecanpy build *.egg-info .pytest_cache .hypothesis
