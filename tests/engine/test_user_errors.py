"""User errors (bad data, downloads, configs) are logged and printed as their message alone;
bugs keep their traceback."""
import logging

import pytest
import torch
from engine_toys import ToyModel

from detgn.checkpoint import CheckpointError
from detgn.config import ConfigError
from detgn.data import CocoFormatError, TooManyBadImagesError
from detgn.data.catalog import DatasetNotFoundError
from detgn.data.mapper import ImageReadError
from detgn.engine.trainer import NonFiniteLossError, Trainer
from detgn.model_zoo import ModelZooError, UnknownModelError
from detgn.utils.errors import UserError, is_user_error


def test_user_facing_errors_are_marked():
    for cls in (ConfigError, CocoFormatError, TooManyBadImagesError, DatasetNotFoundError, ImageReadError,
                NonFiniteLossError, ModelZooError, UnknownModelError, CheckpointError):
        assert issubclass(cls, UserError), cls
    assert is_user_error(CocoFormatError("x")) and not is_user_error(ValueError("x"))
    # Still the builtin kinds callers catch.
    assert issubclass(DatasetNotFoundError, FileNotFoundError) and issubclass(CocoFormatError, ValueError)


def _trainer(loader_fn):
    model = ToyModel()
    return Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   data_loader_fn=loader_fn, max_iter=3)


@pytest.mark.parametrize("error,keeps_traceback", [
    (TooManyBadImagesError("12 distinct training image(s) could not be read"), False),
    (KeyError("a bug"), True),
])
def test_trainer_logs_user_errors_without_traceback(caplog, error, keeps_traceback):
    def loader(start_iter):
        raise error
        yield  # pragma: no cover

    trainer = _trainer(loader)
    with caplog.at_level(logging.INFO, logger="detgn.engine.trainer"), pytest.raises(type(error)):
        trainer.train()
    stops = [r for r in caplog.records if "Training stopped" in r.getMessage()]
    assert len(stops) == 1
    assert bool(stops[0].exc_info) == keeps_traceback
    if not keeps_traceback:
        assert "12 distinct training image(s) could not be read" in stops[0].getMessage()
