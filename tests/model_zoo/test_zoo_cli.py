"""``python -m detgn.model_zoo fetch``: pin lines for an unpinned entry, clean failures."""
from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from detgn.model_zoo import is_verified, register_model
from detgn.model_zoo.__main__ import main
from detgn.model_zoo.catalog import MODEL_ZOO
from zoo_server import Rule

REPO = Path(__file__).resolve().parents[2]
NAME = "detgn://test/unpinned"
REL = "test/unpinned.pkl"


def test_fetch_unpinned_entry_prints_the_lines_that_pin_it(server, zoo_env, random_bytes, capsys):
    data = random_bytes(7_000, 3)
    server.files[REL] = data
    register_model(NAME, REL, None)
    assert main(["fetch", NAME, "--retries", "0"]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(data).hexdigest()
    assert "verified: False" in out
    assert "detgn://test/unpinned has no pinned sha256" in out and "detgn/model_zoo/catalog.py" in out
    lines = out.splitlines()
    pin = f'    "sha256": "{digest}", "size": 7000'
    assert pin in lines
    entry = f'    "test/unpinned": {{"path": "{REL}", "sha256": "{digest}", "size": 7000}},'
    assert entry in lines
    # Pasted into the catalog, the entry pins the file: the next fetch verifies it.
    pasted = ast.literal_eval("{" + entry.strip().rstrip(",") + "}")
    MODEL_ZOO.update(pasted)
    assert main(["fetch", NAME]) == 0
    out = capsys.readouterr().out
    assert "verified: True" in out and "no pinned sha256" not in out
    assert is_verified(zoo_env / REL)


def test_fetch_failures_print_the_message_and_exit_1(server, zoo_env, random_bytes, capsys):
    register_model(NAME, REL, None)
    assert main(["fetch", NAME, "--retries", "0"]) == 1  # not on the server: 404
    err = capsys.readouterr().err
    assert "HTTP 404 Not Found" in err and REL in err and "Traceback" not in err
    data = random_bytes(5_000, 4)
    server.files[REL] = data
    server.rules[REL] = Rule(corrupt=True)
    register_model(NAME, REL, hashlib.sha256(data).hexdigest())
    assert main(["fetch", NAME, "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch for detgn://test/unpinned" in err
    assert main(["fetch", "detgn://test/nope", "--retries", "0"]) == 1
    assert "Unknown model-zoo name 'detgn://test/nope'" in capsys.readouterr().err


def test_fetch_offline_in_a_subprocess_prints_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "DETGN_MODEL_ZOO_MIRROR"}
    env.update(PYTHONPATH=str(REPO), DETGN_MODEL_ZOO_URL="http://127.0.0.1:1/", DETGN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "detgn.model_zoo", "fetch", "detgn://ImageNetPretrained/R-50-GN", "--retries", "0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    print(proc.stderr)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("no network: cannot reach http://127.0.0.1:1/ImageNetPretrained/47261647/R-50-GN.pkl")
    assert "DETGN_MODEL_ZOO_MIRROR" in last
