"""Downloads against a loopback server: cache, resume, retries, hash checks, mirror, offline."""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from detgn.model_zoo import (
    ChecksumError,
    DownloadHTTPError,
    ModelNotFoundError,
    OfflineError,
    TruncatedDownloadError,
    UnknownModelError,
    download,
    get_checkpoint_path,
    is_verified,
    list_models,
    register_model,
    resolve,
)
from detgn.model_zoo.catalog import MODEL_ZOO
from zoo_server import Rule

NAME = "detgn://test/model_a"
REL = "test/model_a.pkl"
FAST = dict(backoff_s=0.01, timeout=5)


def test_download_by_name_verifies_and_reports_progress(publish, server, zoo_env, capsys):
    data = publish(NAME, REL)
    path = download(NAME, **FAST)
    assert Path(path) == zoo_env / REL
    assert Path(path).read_bytes() == data
    assert is_verified(path)
    assert Path(path + ".sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert not Path(path + ".part").exists()
    err = capsys.readouterr().err
    assert "detgn://test/model_a" in err and "MB/s" in err and "(100%)" in err
    assert f"{len(data)} bytes" in err
    assert [r.status for r in server.requests_for(REL)] == [200]


def test_cache_hit_does_not_contact_server(publish, server):
    publish(NAME, REL)
    first = download(NAME, progress=False, **FAST)
    server.files.clear()  # a second fetch would now 404
    assert download(NAME, progress=False, **FAST) == first
    assert get_checkpoint_path(NAME) == first
    assert len(server.requests_for(REL)) == 1


def test_cached_file_with_wrong_hash_is_fetched_again(publish, server):
    data = publish(NAME, REL)
    path = Path(download(NAME, progress=False, **FAST))
    path.write_bytes(b"tampered" + data[8:])
    assert not is_verified(path)
    assert Path(download(NAME, progress=False, **FAST)).read_bytes() == data
    assert is_verified(path)
    assert len(server.requests_for(REL)) == 2


def test_cut_connection_resumes_with_range_within_one_call(publish, server):
    data = publish(NAME, REL, nbytes=400_000)
    server.rules[REL] = Rule(cut_after_once=123_457)
    path = download(NAME, progress=False, **FAST)
    assert Path(path).read_bytes() == data and is_verified(path)
    reqs = server.requests_for(REL)
    assert [(r.status, r.range) for r in reqs] == [(200, None), (206, "bytes=123457-")]
    assert reqs[0].sent == 123_457
    assert reqs[1].sent == len(data) - 123_457  # only the rest was fetched


def test_truncated_transfer_keeps_part_and_next_call_resumes(publish, server, zoo_env):
    data = publish(NAME, REL, nbytes=300_000)
    server.rules[REL] = Rule(cut_after_once=100_000)
    with pytest.raises(TruncatedDownloadError) as e:
        download(NAME, retries=0, progress=False, **FAST)
    msg = str(e.value)
    assert "got 100000 of 300000 bytes" in msg and "resume" in msg
    final = zoo_env / REL
    assert not final.exists() and not Path(str(final) + ".sha256").exists()  # atomic: nothing at the final path
    assert Path(str(final) + ".part").stat().st_size == 100_000
    path = download(NAME, retries=0, progress=False, **FAST)
    assert Path(path).read_bytes() == data
    assert server.requests_for(REL)[-1].range == "bytes=100000-"
    assert server.requests_for(REL)[-1].sent == 200_000
    assert not Path(path + ".part").exists()


def test_server_without_range_support_restarts_cleanly(publish, server):
    data = publish(NAME, REL)
    server.rules[REL] = Rule(cut_after_once=50_000, honour_range=False)
    path = download(NAME, progress=False, **FAST)
    assert Path(path).read_bytes() == data and is_verified(path)
    reqs = server.requests_for(REL)
    assert [(r.status, r.range) for r in reqs] == [(200, None), (200, "bytes=50000-")]
    assert reqs[1].sent == len(data)


def test_stale_part_larger_than_file_gets_416_then_restarts(publish, server, zoo_env):
    data = publish(NAME, REL, nbytes=200_000)
    part = zoo_env / (REL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 250_000)
    path = download(NAME, progress=False, **FAST)
    assert Path(path).read_bytes() == data
    assert [r.status for r in server.requests_for(REL)] == [416, 200]


def test_http_404_names_url_and_is_not_retried(server, zoo_env):
    register_model(NAME, REL, "ab" * 32)
    with pytest.raises(ModelNotFoundError) as e:
        download(NAME, progress=False, **FAST)
    assert server.url + REL in str(e.value) and "MODEL_ZOO.md" in str(e.value)
    assert len(server.requests_for(REL)) == 1
    assert not (zoo_env / REL).exists()


def test_wrong_bytes_raise_checksum_error_and_leave_nothing(publish, server, zoo_env):
    data = publish(NAME, REL)
    server.rules[REL] = Rule(corrupt=True)
    with pytest.raises(ChecksumError) as e:
        download(NAME, progress=False, **FAST)
    msg = str(e.value)
    good = hashlib.sha256(data).hexdigest()
    bad = hashlib.sha256(bytes(b ^ 0xFF for b in data)).hexdigest()
    assert f"expected {good}, got {bad}" in msg
    assert "removed" in msg and "catalog is out of date" in msg and "DETGN_MODEL_ZOO_MIRROR" in msg
    assert list((zoo_env / "test").iterdir()) == [zoo_env / (REL + ".lock")]  # no final, no part
    assert len(server.requests_for(REL)) == 1  # a wrong hash is not retried blindly


def test_transient_503_is_retried_with_backoff(publish, server, caplog):
    data = publish(NAME, REL)
    server.rules[REL] = Rule(status_once=503)
    with caplog.at_level(logging.WARNING, logger="detgn.model_zoo.download"):
        path = download(NAME, progress=False, **FAST)
    assert Path(path).read_bytes() == data
    assert [r.status for r in server.requests_for(REL)] == [503, 200]
    assert "retry 1 of 3" in caplog.text


def test_persistent_500_gives_up_after_retries(server):
    register_model(NAME, REL, "cd" * 32)
    server.rules[REL] = Rule(status=500)
    with pytest.raises(DownloadHTTPError, match="HTTP 500"):
        download(NAME, retries=2, progress=False, **FAST)
    assert len(server.requests_for(REL)) == 3


def test_read_timeout_is_retried(publish, server):
    data = publish(NAME, REL)
    server.rules[REL] = Rule(stall_once_s=1.5)
    t0 = time.monotonic()
    path = download(NAME, progress=False, backoff_s=0.01, timeout=0.4)
    assert Path(path).read_bytes() == data
    assert time.monotonic() - t0 < 5
    assert len(server.requests_for(REL)) == 2


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_error_then_mirror_works(zoo_env, tmp_path, monkeypatch, random_bytes):
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", f"http://127.0.0.1:{_closed_port()}/zoo")
    data = random_bytes(200_000, 7)
    register_model(NAME, REL, hashlib.sha256(data).hexdigest())
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as e:
        download(NAME, retries=2, progress=False, **FAST)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert msg.startswith("no network") and "DETGN_MODEL_ZOO_MIRROR=" in msg and "DETGN_CACHE=" in msg
    assert str(zoo_env / REL) in msg
    assert not (zoo_env / REL).exists()

    mirror = tmp_path / "mirror"
    (mirror / "test").mkdir(parents=True)
    (mirror / REL).write_bytes(data)
    monkeypatch.setenv("DETGN_MODEL_ZOO_MIRROR", str(mirror))
    path = download(NAME, progress=False, **FAST)
    assert Path(path) == zoo_env / REL and Path(path).read_bytes() == data and is_verified(path)


def test_bad_mirror_file_is_rejected(zoo_env, tmp_path, monkeypatch, random_bytes):
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", f"http://127.0.0.1:{_closed_port()}/")
    data = random_bytes(50_000, 3)
    register_model(NAME, REL, hashlib.sha256(data).hexdigest())
    mirror = tmp_path / "mirror"
    (mirror / "test").mkdir(parents=True)
    (mirror / REL).write_bytes(data[:-1] + b"!")
    monkeypatch.setenv("DETGN_MODEL_ZOO_MIRROR", str(mirror))
    with pytest.raises(ChecksumError, match="mirror file .* itself is bad"):
        download(NAME, progress=False, **FAST)
    assert not (zoo_env / REL).exists() and (mirror / REL).exists()


def test_concurrent_downloads_fetch_once(publish, server):
    data = publish(NAME, REL)
    server.rules[REL] = Rule(stall_once_s=0.3)
    results, errors = [], []

    def worker():
        try:
            results.append(download(NAME, progress=False, **FAST))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert Path(results[0]).read_bytes() == data
    assert len(server.requests_for(REL)) == 1


def test_unpinned_entry_downloads_but_is_not_verified(server, zoo_env, random_bytes):
    data = random_bytes(10_000, 1)
    server.files[REL] = data
    register_model(NAME, REL, None)
    path = download(NAME, progress=False, **FAST)
    assert Path(path).read_bytes() == data
    assert not is_verified(path) and not Path(path + ".sha256").exists()


def test_url_with_explicit_sha_and_conflicting_sha(publish, server):
    data = publish(NAME, REL)
    sha = hashlib.sha256(data).hexdigest()
    path = download(server.url + REL, sha256=sha.upper(), progress=False, **FAST)
    assert Path(path).read_bytes() == data and is_verified(path)
    with pytest.raises(ValueError, match="contradicts the catalog"):
        download(NAME, sha256="0" * 64, progress=False)
    server.files["other/file.bin"] = b"hello"
    with pytest.raises(ChecksumError):
        download(server.url + "other/file.bin", sha256="1" * 64, progress=False, **FAST)


def test_resolve_list_and_register_validation(server):
    register_model("test/model_b", "b/model.pth", "EF" * 32, size=12)
    assert resolve("detgn://test/model_b") == (server.url + "b/model.pth", "ef" * 32)
    assert "detgn://test/model_b" in list_models()
    with pytest.raises(UnknownModelError, match="Did you mean: detgn://test/model_b"):
        resolve("detgn://test/model_c")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        register_model("x", "x.pkl", "abc")
    for bad in ("../x.pkl", "/abs/x.pkl", "http://h/x.pkl", "a/../../x.pkl"):
        with pytest.raises(ValueError, match="relative to the base URL"):
            register_model("x", bad, None)


def test_get_checkpoint_path_local_and_missing(zoo_env, tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"w")
    assert get_checkpoint_path(str(f)) == str(f)
    with pytest.raises(FileNotFoundError, match="not an existing file, not a URL"):
        get_checkpoint_path(str(tmp_path / "missing.pth"))


def test_real_catalog_has_the_imagenet_backbones():
    for name in ("R-50", "R-101", "R-50-GN", "R-101-GN"):
        entry = MODEL_ZOO[f"ImageNetPretrained/{name}"]
        assert str(entry["path"]).endswith(f"/{name}.pkl")
        assert entry["sha256"] is None or len(entry["sha256"]) == 64


def test_cli_fetch_prints_a_catalog_entry(publish, capsys):
    from detgn.model_zoo.__main__ import main

    data = publish(NAME, REL, nbytes=5_000)
    assert main(["fetch", NAME]) == 0
    out = capsys.readouterr().out
    assert f"sha256:   {hashlib.sha256(data).hexdigest()}" in out and "size:     5000" in out
    assert "verified: True" in out
    assert main(["list"]) == 0
    assert "detgn://test/model_a" in capsys.readouterr().out
