"""tools/demo.py: how many training processes and threads the demo uses, and the command it runs."""
from __future__ import annotations

import pytest


@pytest.fixture()
def demo(tools_helpers):
    return tools_helpers.load_tool("demo")


@pytest.mark.parametrize(
    "cores, asked, expected",
    [(1, 0, (1, 1)), (2, 0, (2, 1)), (8, 0, (2, 4)), (3, 0, (2, 1)), (8, 1, (1, 8)), (8, 4, (4, 2))],
)
def test_processes_and_threads(demo, monkeypatch, cores, asked, expected):
    monkeypatch.setattr(demo, "_available_cores", lambda: cores)
    assert demo._processes_and_threads(asked) == expected


def test_train_command_launches_processes_with_threads(demo, monkeypatch, tmp_path):
    """The train step runs train_net.py with --num-gpus and CPU.NUM_THREADS, and --resume
    when a checkpoint pointer exists (so an interrupted demo continues)."""
    monkeypatch.setattr(demo, "_available_cores", lambda: 2)
    calls = []
    status = {"rc": 0}

    def fake_run(cmd):
        calls.append(cmd)
        return demo.subprocess.CompletedProcess(cmd, status["rc"])

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    args = demo.argparse.Namespace(output=str(tmp_path), config="demo_gn_scratch", opts=["SEED", "3"], fresh=False, procs=0)
    demo.step_train(args)
    cmd = calls[-1]
    assert cmd[cmd.index("--num-gpus") + 1] == "2"
    assert cmd[cmd.index("CPU.NUM_THREADS") + 1] == "1"
    assert "--resume" not in cmd and cmd[-2:] == ["SEED", "3"]
    (tmp_path / "last_checkpoint").write_text("model_0000199.pth")
    demo.step_train(args)
    assert "--resume" in calls[-1]
    # A failed training run (train_net.py printed its message) ends the demo with its status.
    status["rc"] = 1
    with pytest.raises(SystemExit) as e:
        demo.step_train(args)
    assert e.value.code == 1
