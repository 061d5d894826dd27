"""Linear scaling of the schedule, its printout, and the warmup / multi-step LR values."""
import pytest
import torch
from torch import nn

from detgn.config import ConfigError, get_cfg
from detgn.solver import (
    Schedule,
    WarmupMultiStepLR,
    build_lr_scheduler,
    format_schedule_table,
    reference_schedule,
    resolve_schedule,
    schedule_changes,
)


def _cfg(ims_per_gpu=1, **solver):
    cfg = get_cfg()  # 0.02, 180k, steps 120k/160k, warmup 500, ckpt 5000 at 16 images
    cfg.SOLVER.IMS_PER_GPU = ims_per_gpu
    cfg.TEST.EVAL_PERIOD = 10000
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


@pytest.mark.parametrize(
    "world,ims,lr,max_iter,steps,warmup,ckpt,evalp",
    [
        (1, 1, 0.00125, 2_880_000, (1_920_000, 2_560_000), 8000, 80000, 160000),
        (2, 1, 0.0025, 1_440_000, (960_000, 1_280_000), 4000, 40000, 80000),
        (8, 1, 0.01, 360_000, (240_000, 320_000), 1000, 10000, 20000),
        (8, 2, 0.02, 180_000, (120_000, 160_000), 500, 5000, 10000),
        (4, 4, 0.02, 180_000, (120_000, 160_000), 500, 5000, 10000),
    ],
)
def test_linear_scaling(world, ims, lr, max_iter, steps, warmup, ckpt, evalp):
    s = resolve_schedule(_cfg(ims), world_size=world)
    assert s.ims_per_batch == world * ims
    assert s.base_lr == pytest.approx(lr)
    assert (s.max_iter, s.steps, s.warmup_iters, s.checkpoint_period, s.eval_period) == (
        max_iter,
        steps,
        warmup,
        ckpt,
        evalp,
    )
    assert s.gamma == 0.1 and s.warmup_factor == pytest.approx(1 / 3)


@pytest.mark.parametrize("b", [1, 2, 8, 16])
def test_schedule_table_printout(b, capsys):
    cfg = _cfg(1)
    ref, act = reference_schedule(cfg), resolve_schedule(cfg, world_size=b)
    table = format_schedule_table(ref, act)
    print(table)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:] if line and line[0] != "l" and line[0] != "S"}
    assert rows["ims_per_batch"] == ["16", str(b)]
    assert rows["base_lr"] == ["0.02", f"{0.02 * b / 16:.6g}"]
    assert rows["max_iter"] == ["180000", str(180000 * 16 // b)]
    assert rows["steps"] == ["120000,", "160000", f"{120000 * 16 // b},", str(160000 * 16 // b)]
    assert rows["warmup_iters"] == ["500", str(500 * 16 // b)]
    if b != 16:
        assert f"linear scaling: LR x {b}/16, iterations x 16/{b}" in table
    else:
        assert "linear scaling" not in table
    assert "max_iter" in capsys.readouterr().out


def test_scale_schedule_off_keeps_numbers():
    cfg = _cfg(1, SCALE_SCHEDULE=False)
    s = resolve_schedule(cfg, world_size=2)
    assert s.ims_per_batch == 2
    assert (s.base_lr, s.max_iter, s.steps, s.warmup_iters) == (0.02, 180000, (120000, 160000), 500)
    assert "used as written" in format_schedule_table(reference_schedule(cfg), s)


def test_rounding_keeps_positive_counts_positive():
    cfg = _cfg(1, MAX_ITER=10, STEPS=(5,), WARMUP_ITERS=1, CHECKPOINT_PERIOD=1)
    cfg.SOLVER.REFERENCE_IMS_PER_BATCH = 2
    cfg.TEST.EVAL_PERIOD = 0
    s = resolve_schedule(cfg, world_size=3)  # x 2/3
    assert (s.max_iter, s.steps, s.warmup_iters, s.checkpoint_period, s.eval_period) == (7, (3,), 1, 1, 0)


def test_bad_schedule_is_config_error():
    with pytest.raises(ConfigError, match="SOLVER.STEPS"):
        resolve_schedule(_cfg(1, STEPS=(160000, 120000)), world_size=1)
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        resolve_schedule(_cfg(1, BASE_LR=0.0), world_size=1)


def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_warmup_then_steps_values():
    sched = Schedule(
        ims_per_batch=16, base_lr=0.02, max_iter=20, steps=(10, 15), warmup_iters=5,
        warmup_factor=1 / 3, gamma=0.1, checkpoint_period=0, eval_period=0,
    )
    opt = _opt(sched.base_lr)
    lr_sched = build_lr_scheduler(opt, sched)
    seen = []
    for it in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr_sched.step()
    expected = []
    for it in range(20):
        warm = (1 / 3) * (1 - it / 5) + it / 5 if it < 5 else 1.0
        expected.append(0.02 * warm * (0.1 ** sum(it >= s for s in (10, 15))))
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == pytest.approx(0.02 / 3)
    assert seen[5] == pytest.approx(0.02) and seen[10] == pytest.approx(0.002) and seen[15] == pytest.approx(0.0002)
    assert sched.lr_factor(12) == pytest.approx(0.1)


def test_scheduler_state_round_trip_restores_lr():
    opt = _opt(0.1)
    s = WarmupMultiStepLR(opt, milestones=[3, 6], gamma=0.5, warmup_iters=2, warmup_factor=0.25)
    for _ in range(4):
        opt.step()
        s.step()
    state = s.state_dict()
    opt2 = _opt(0.1)
    s2 = WarmupMultiStepLR(opt2, milestones=[3, 6], gamma=0.5, warmup_iters=2, warmup_factor=0.25)
    s2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(4):
        opt.step(); s.step(); opt2.step(); s2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)


def test_schedule_changes_and_dict_round_trip():
    a = resolve_schedule(_cfg(1), world_size=8)
    b = resolve_schedule(_cfg(1), world_size=16)
    assert Schedule.from_dict(a.as_dict()) == a
    changes = schedule_changes(a, b)
    assert "ims_per_batch: 8 -> 16" in changes and "max_iter: 360000 -> 180000" in changes
    assert schedule_changes(a, a) == []
