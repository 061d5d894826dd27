"""Fixtures of the data tests: ``tool``, the module of ``detgn validate`` (tools/validate_dataset.py)."""
import pytest

from detgn.cli import validate_dataset


@pytest.fixture(scope="module")
def tool():
    return validate_dataset
