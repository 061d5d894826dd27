"""Fixtures for the model-zoo tests: a loopback server, a private cache, a clean catalog."""
from __future__ import annotations

import hashlib

import pytest

from detgn.model_zoo import catalog
from zoo_server import ZooServer


@pytest.fixture
def zoo_env(tmp_path, monkeypatch):
    """Private cache, no mirror, no proxies, and a catalog restored after the test."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("DETGN_MODEL_ZOO_MIRROR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DETGN_CACHE", str(cache))
    saved = {k: dict(v) for k, v in catalog.MODEL_ZOO.items()}
    yield cache
    catalog.MODEL_ZOO.clear()
    catalog.MODEL_ZOO.update(saved)


@pytest.fixture
def server(zoo_env, monkeypatch):
    """A running :class:`ZooServer` that is the zoo's base URL."""
    srv = ZooServer()
    monkeypatch.setenv("DETGN_MODEL_ZOO_URL", srv.url)
    yield srv
    srv.close()


@pytest.fixture
def publish(server):
    """``publish(name, rel_path, nbytes) -> bytes``: random file served and registered."""

    def _publish(name: str, rel: str, nbytes: int = 300_000, seed: int = 0) -> bytes:
        data = _random_bytes(nbytes, seed)
        server.files[rel] = data
        catalog.register_model(name, rel, hashlib.sha256(data).hexdigest(), size=nbytes)
        return data

    return _publish


def _random_bytes(n: int, seed: int) -> bytes:
    # Deterministic and fast: a counter-mode stream of sha256 blocks.
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:n])


@pytest.fixture
def random_bytes():
    return _random_bytes
