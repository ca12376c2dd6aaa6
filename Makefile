# Two commands: `make book` and `make test`. Each creates .venv and installs the project into it
# when needed (a fresh machine has nothing) and is quick when everything is already installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
LAB    := $(VENV)/.installed-lab

.PHONY: book test lab install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

book: $(STAMP)
	$(PY) -m trajlib.paper reproduce --preset laptop --jobs 2

# JupyterLab on the notebooks with a kernel named after this project's venv (--allow-root only as root)
lab: $(STAMP) $(LAB)
	$(PY) -m ipykernel install --sys-prefix --name trajlib --display-name "trajlib (.venv)" >/dev/null
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

$(LAB): pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,lab]'
	touch $(LAB)

bench: $(STAMP)
	$(PY) benchmarks/gram_bench.py
	$(PY) benchmarks/record_bench.py
	$(PY) benchmarks/manifest_bench.py

clean:
	rm -rf book/_build book/_generated
