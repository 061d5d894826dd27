# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# `make docs` writes the HTML documentation to docs/_build/html (warnings are errors).
# Each creates the virtualenv and installs what it needs the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detgn-installed
PYTEST_ARGS ?=

.PHONY: venv test demo docs clean-venv

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -c "import torch, torchvision; from torchvision.ops import nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ops ok')"
	touch $(STAMP)

test: $(STAMP)
	@$(PY) -c "import platform, torch, torchvision; print(f'Testing with torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}')"
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

clean-venv:
	rm -rf $(VENV)
