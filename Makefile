# Two commands get a fresh machine going: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP)

# Re-install only when the dependency files change; the venv itself is created once.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) examples/formats_demo.py

bench: setup
	$(PY) benchmarks/formats.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
