"""What users read holds product words only: no words of how the work was organised and no
issue numbers in the docs, comments, docstrings and test names (commits and dates instead).

The pattern is the one the project's before-stop check uses; pytest's ``scope="session"`` and
onnxruntime's ``InferenceSession`` / ``SessionOptions`` are the words that may match it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "MODEL_ZOO.md", "setup.py", "Makefile", "docs", "detgn", "tools", "tests", "datasets"]
SKIPPED_DIRS = {"_build", "_generated", "__pycache__", ".pytest_cache"}
PROCESS_WORDS = re.compile(
    r"\bstop [0-9]+|this stop|stop's|\bsessions?\b|lent to|loan|\bissues? #?[0-9]+", re.IGNORECASE
)
ALLOWED = re.compile(r"scope=.session|InferenceSession|SessionOptions|session\.run|session = ort|ort\.", re.IGNORECASE)


def _text_files(paths: List[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(path).parts) and not p.name.endswith(".egg-info"):
                    yield p


def process_words(paths: List[Path]) -> List[str]:
    """``file:line: text`` for every line of a text file under ``paths`` that matches the pattern."""
    found = []
    for path in _text_files(paths):
        data = path.read_bytes()
        if b"\0" in data:  # pictures, weights
            continue
        for no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if PROCESS_WORDS.search(line) and not ALLOWED.search(line):
                found.append(f"{path}:{no}: {line.strip()}")
    return found


def test_docs_code_and_tests_hold_no_process_words():
    paths = [REPO / p for p in SCANNED]
    this_file = Path(__file__).resolve()
    found = [f for f in process_words(paths) if not f.startswith(f"{this_file}:")]
    assert found == [], "name commits, dates and CPU models instead:\n" + "\n".join(found)


def test_finds_planted_words(tmp_path):
    (tmp_path / "a.md").write_text("Measured at stop 27.\nAs issue 21 asks.\nfixture(scope=\"session\")\n")
    (tmp_path / "b.py").write_text("sess = ort.InferenceSession(path)\n# no GPU was lent to us\n")
    found = process_words([tmp_path])
    assert [f.split(": ", 1)[1] for f in found] == ["Measured at stop 27.", "As issue 21 asks.", "# no GPU was lent to us"]
