"""detgn.utils.file_io: a destination holds its old content or the complete new one, never a mix."""
import json
import os

import pytest

from detgn.utils.file_io import atomic_write, atomic_write_bytes, atomic_write_json, replace_durably


def _temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_file_appears_only_complete(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")
    seen = []

    def write(f):
        f.write(b"new ")
        f.flush()
        seen.append(path.read_bytes())  # a reader during the write sees the old file
        f.write(b"content, complete")

    atomic_write(str(path), write)
    assert seen == [b"old content"]
    assert path.read_bytes() == b"new content, complete"
    assert _temp_files(tmp_path) == []


def test_error_leaves_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")

    def failing(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), failing)
    assert path.read_bytes() == b"old content"
    assert _temp_files(tmp_path) == []

    def interrupted(f):
        f.write(b"x")
        raise KeyboardInterrupt  # not an Exception: the temp file goes all the same

    # A file that did not exist before does not appear either.
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "new.bin"), interrupted)
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_temp_file_is_hidden_next_to_the_destination(tmp_path):
    names = []
    atomic_write(str(tmp_path / "model_final.pth"), lambda f: names.extend(os.listdir(tmp_path)))
    assert len(names) == 1 and names[0].startswith(".model_final.pth.") and names[0].endswith(".tmp")


def test_json_and_bytes_helpers(tmp_path):
    path = tmp_path / "deep" / "er" / "out.json"
    atomic_write_json(str(path), {"a": [1, 2]}, separators=(",", ":"))
    assert path.read_text() == '{"a":[1,2]}' and json.loads(path.read_text()) == {"a": [1, 2]}
    atomic_write_bytes(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    part = tmp_path / "file.part"
    part.write_bytes(b"payload")
    replace_durably(str(part), str(tmp_path / "file"))
    assert (tmp_path / "file").read_bytes() == b"payload" and not part.exists()
