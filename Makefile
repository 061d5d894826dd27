# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtualenv and installs what it needs the first time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detgn-installed
PYTEST_ARGS ?=

.PHONY: venv test demo clean-venv

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

clean-venv:
	rm -rf $(VENV)
