# The set-up commands of the README: `make demo`, `make app` (the web demo) and `make test`. Each installs the
# Debian packages it needs when missing (scripts/system-packages.sh; as root, else it says what to install),
# creates .venv when it is missing and installs the project with the torch pin of constraints.txt.
PY      ?= python3
FOR     ?= test
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

# the interpreter to check for venv support, only while .venv is still to be made
VENV_PY = $(if $(wildcard $(BIN)/python),,$(PY))

.PHONY: install system test demo app bench interop clean

# The Debian packages `make $(FOR)` needs (FOR = test, demo or app), installed when missing
system:
	sh scripts/system-packages.sh $(FOR) $(VENV_PY)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,zoo,demo]"
	touch $(STAMP)

test:
	$(MAKE) --no-print-directory system FOR=test
	$(MAKE) --no-print-directory install
	$(BIN)/python -m pytest -q

demo:
	$(MAKE) --no-print-directory system FOR=demo
	$(MAKE) --no-print-directory install
	$(BIN)/visionsae demo

app:
	$(MAKE) --no-print-directory system FOR=app
	$(MAKE) --no-print-directory install
	$(BIN)/visionsae app

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# SAELens and sparsify load our exports and encode as we do (in .venv-peers, made on first use)
interop: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only interop

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
