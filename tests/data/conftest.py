"""Fixtures of the data tests: ``tool``, tools/validate_dataset.py loaded as a module."""
import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "validate_dataset.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("validate_dataset", TOOL)
    module = importlib.util.module_from_spec(spec)
    # In sys.modules so worker processes can unpickle its functions (--workers).
    sys.modules["validate_dataset"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("validate_dataset", None)
