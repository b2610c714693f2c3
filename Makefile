# The two commands that set up everything on a fresh machine:
#   make demo   create .venv, install boxtune, run a quick sweep on generated data with a local Ray
#   make test   create .venv if needed, install boxtune with the dev extra, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# pip resolves the newest torchvision together with the torch it was built against;
# nothing here pins torch (see README, "Installing").
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/boxtune demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check tune trainables search_spaces tests benchmarks

clean:
	rm -rf $(VENV) demo_out build *.egg-info
