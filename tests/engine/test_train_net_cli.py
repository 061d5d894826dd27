"""tools/train_net.py command line and the run set-up (config dump, logs, seed)."""
import logging

import pytest
import yaml

from detgn.config import get_cfg
from detgn.engine import default_argument_parser, default_setup
from detgn.utils.logger import log_path, setup_logger


@pytest.fixture
def train_net():
    from detgn.engine import run

    return run


@pytest.fixture
def restore_detgn_logger():
    """setup_logger reconfigures the 'detgn' logger; put it back for the other tests."""
    log = logging.getLogger("detgn")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    for h in list(log.handlers):
        if h not in saved[0]:
            log.removeHandler(h)
            h.close()
    log.propagate, log.level = saved[1], saved[2]


def test_arguments():
    args = default_argument_parser().parse_args(
        ["--config", "fpn_gn_long.yaml", "--resume", "--num-gpus", "2", "SOLVER.IMS_PER_GPU", "2", "OUTPUT_DIR", "x"]
    )
    assert args.config == "fpn_gn_long.yaml" and args.resume and not args.eval_only and args.num_gpus == 2
    assert args.opts == ["SOLVER.IMS_PER_GPU", "2", "OUTPUT_DIR", "x"]
    with pytest.raises(SystemExit):
        default_argument_parser().parse_args([])  # --config is required


def test_config_errors_exit_2_with_message(train_net, capsys):
    assert train_net.cli(["--config", "no_such_config_anywhere"]) == 2
    assert "Config error: No config file 'no_such_config_anywhere'" in capsys.readouterr().err
    assert train_net.cli(["--config", "Base-RCNN-FPN.yaml", "SOLVER.NO_SUCH_KEY", "1"]) == 2
    assert "Unknown config key 'SOLVER.NO_SUCH_KEY'" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_detgn_logger")
def test_default_setup_dumps_config_logs_and_resolves_seed(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = -1
    cfg.SOLVER.BASE_LR = 0.01
    seed = default_setup(cfg)
    assert seed >= 0 and cfg.SEED == seed
    dumped = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert dumped["SEED"] == seed and dumped["SOLVER"]["BASE_LR"] == 0.01
    logging.getLogger("detgn.test").info("a line for the log file")
    text = (tmp_path / "log.txt").read_text()
    assert "Resolved config saved to" in text and "a line for the log file" in text
    assert "PyTorch" in text  # the environment table (VERBOSE_STARTUP)
    # A resumed run with SEED < 0 reuses the seed of the run it continues.
    cfg2 = get_cfg()
    cfg2.OUTPUT_DIR = str(tmp_path)
    cfg2.SEED = -1
    cfg2.freeze()
    assert default_setup(cfg2, resume=True) == seed
    assert cfg2.is_frozen() and cfg2.SEED == seed


@pytest.mark.usefixtures("restore_detgn_logger")
def test_logger_per_rank_files_and_no_duplicate_handlers(tmp_path):
    setup_logger(str(tmp_path), rank=1)
    log = setup_logger(str(tmp_path), rank=1)  # configuring twice must not double the lines
    log.info("from rank one")
    for h in log.handlers:
        h.flush()
    assert log_path(str(tmp_path), 1).endswith("log.txt.rank1")
    assert (tmp_path / "log.txt.rank1").read_text().count("from rank one") == 1
    assert not (tmp_path / "log.txt").exists()
