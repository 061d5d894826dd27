"""The restricted unpickler for Detectron .pkl weights (detgn.checkpoint.safe_pickle).

What it must read: every way a Detectron weights pickle is written (Python 2 cPickle
protocol 2 with array data as Python 2 ``str``; Python 3 protocol 2, 4, 5; numpy 1.x and
2.x global names; wrapped in ``{"blobs": ...}`` or bare). What it must refuse, without
running anything: any other global, persistent ids, extension codes."""
import collections
import copyreg
import io
import os
import pickle
import subprocess
import warnings

import numpy as np
import pytest
import torch

from detgn.checkpoint.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, load_safe_pickle
from py2_cpickle import py2_dumps


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv1_w": rng.standard_normal((8, 3, 7, 7)).astype(np.float32),
        "conv1_gn_s": rng.standard_normal(8).astype(np.float32),
        "res2_0_branch2a_w": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
        "fc1000_b": rng.standard_normal(300).astype(np.float32),  # > 255 bytes: BINSTRING in protocol 2
        "lr": np.array([0.02], np.float64),
        "model_iter": np.array([90000], np.int64),
        "mask": np.array([True, False]),
        "u8": np.arange(250, 256, dtype=np.uint8),
    }


def _assert_same(got, want):
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()  # bit-exact, NaN payloads included
    else:
        assert got == want


def _python3_content(seed=0):
    """What a Python 3 writer may put next to the arrays."""
    d = _arrays(seed)
    d.update({
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.float32(1.5),
        "iter": np.int64(3),
        "dtype": np.dtype(">i4"),
        "order": collections.OrderedDict([("b", 1), ("a", 2)]),
        "raw": b"\x00\xff",
        "no_bytes": b"",
        "__author__": "Kaiming He & Yuxin Wu",
        "numbers": (1, 2.5, None, True, 10 ** 30),
        "names": ["res2", "res3"],
    })
    return d


def _numpy1_names(data: bytes) -> bytes:
    """A protocol 2 stream with the global names numpy 1.x wrote (numpy.core, not numpy._core)."""
    assert b"cnumpy._core.multiarray\n" in data
    out = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy._core" not in out
    return out


VARIANTS = {
    "py3-protocol2": lambda obj: pickle.dumps(obj, protocol=2),
    "py3-protocol2-numpy1-names": lambda obj: _numpy1_names(pickle.dumps(obj, protocol=2)),
    "py3-protocol4": lambda obj: pickle.dumps(obj, protocol=4),
    "py3-protocol5": lambda obj: pickle.dumps(obj, protocol=5),
}


@pytest.mark.parametrize("wrap", [True, False], ids=["blobs", "bare"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_python3_pickles_load_exactly(tmp_path, variant, wrap):
    content = _python3_content()
    obj = {"blobs": content, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n"} if wrap else content
    path = tmp_path / "w.pkl"
    path.write_bytes(VARIANTS[variant](obj))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning from numpy.core, nothing else either
        got = load_safe_pickle(path)
    _assert_same(got, obj)
    f = got["blobs"]["fortran"] if wrap else got["fortran"]
    assert f.flags.f_contiguous and not f.flags.c_contiguous


@pytest.mark.parametrize("wrap", [True, False], ids=["blobs", "bare"])
def test_python2_cpickle_file_loads_exactly_and_needs_latin1(tmp_path, wrap):
    """Detectron's own files: Python 2 cPickle, protocol 2, array data as Python 2 str."""
    arrays = _arrays(1)
    # Python 2 str (bytes here) for keys and the author, with a non-ASCII byte.
    blobs = {k.encode(): v for k, v in arrays.items()}
    blobs[b"__author__"] = b"Ren\xe9 & Kaiming"
    blobs[b"__version__"] = 2
    data = py2_dumps({b"blobs": blobs, b"cfg": b"MODEL:\n  NUM_CLASSES: 81\n"} if wrap else blobs)
    assert data[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert b"_codecs" not in data  # array data are BINSTRING / SHORT_BINSTRING opcodes
    # Python 3's default (ASCII) cannot decode those str; latin1 gives their bytes back.
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    path = tmp_path / "R-50-GN.pkl"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_safe_pickle(str(path))
    b = got["blobs"] if wrap else got
    if wrap:
        assert got["cfg"] == "MODEL:\n  NUM_CLASSES: 81\n"
    assert b["__author__"] == "Ren\xe9 & Kaiming" and b["__version__"] == 2
    _assert_same({k: b[k] for k in arrays}, arrays)
    # The same as full unpickling with latin1 (what Detectron users did), minus the risk.
    _assert_same(got, pickle.loads(data, encoding="latin1"))


def test_file_objects_and_every_allowed_global_resolves(tmp_path):
    data = pickle.dumps({"a": np.ones(3, np.float32)}, protocol=5)
    got = load_safe_pickle(io.BytesIO(data))
    assert np.array_equal(got["a"], np.ones(3, np.float32))
    with open(tmp_path / "x.pkl", "wb") as f:
        f.write(data)
    with open(tmp_path / "x.pkl", "rb") as f:
        assert np.array_equal(load_safe_pickle(f)["a"], np.ones(3, np.float32))
    # Every allow-listed name, written as a GLOBAL opcode, resolves (to this numpy's object).
    from detgn.checkpoint.safe_pickle import RestrictedUnpickler

    u = RestrictedUnpickler(io.BytesIO(b""), source="t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module, name in ALLOWED_GLOBALS:
            assert callable(u.find_class(module, name)), (module, name)
    numpy1, numpy2 = (u.find_class(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray"))
    assert numpy1 is numpy2


# ---------------------------------------------------------------------------- #
# Refusals: nothing of the file runs
# ---------------------------------------------------------------------------- #
class _Payload:
    """Unpickles to ``func(*args)``: what a malicious .pkl does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil(kind, marker):
    """(pickle bytes with real blobs and a payload that would create ``marker``, refused global)."""
    blobs = dict(_arrays(2))
    if kind in ("os.system", "posix.system"):
        blobs["x"] = _Payload(os.system, f"touch {marker}")
        data = pickle.dumps({"blobs": blobs}, protocol=2)
        assert b"cposix\nsystem\n" in data
        if kind == "os.system":
            data = data.replace(b"cposix\nsystem\n", b"cos\nsystem\n")
        return data, kind
    if kind == "builtins.eval":
        blobs["x"] = _Payload(eval, f"open({str(marker)!r}, 'w').close()")
        return pickle.dumps({"blobs": blobs}, protocol=4), "builtins.eval"
    if kind == "__builtin__.eval":  # protocol 2 writes Python 2's module name
        blobs["x"] = _Payload(eval, f"open({str(marker)!r}, 'w').close()")
        return pickle.dumps({"blobs": blobs}, protocol=2), "__builtin__.eval"
    if kind == "subprocess.Popen":
        blobs["x"] = _Payload(subprocess.Popen, ["touch", str(marker)])
        return pickle.dumps({"blobs": blobs}, protocol=5), "subprocess.Popen"
    if kind == "object-array":  # an element of an object array goes through find_class too
        blobs["x"] = np.array([_Payload(os.system, f"touch {marker}")], dtype=object)
        return pickle.dumps({"blobs": blobs}, protocol=4), "posix.system"
    if kind == "torch":
        blobs["x"] = torch.zeros(3)
        return pickle.dumps({"blobs": blobs}, protocol=2), "torch._utils._rebuild_tensor_v2"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.eval", "__builtin__.eval",
                                  "subprocess.Popen", "object-array", "torch"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, refused = _evil(kind, marker)
    if kind != "torch":  # the payload is live: full unpickling runs it
        obj = pickle.loads(data)
        x = obj["blobs"]["x"]
        for p in (x if isinstance(x, np.ndarray) else [x]):
            if isinstance(p, subprocess.Popen):
                p.wait(timeout=10)
        assert marker.exists()
        marker.unlink()
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as e:
        load_safe_pickle(path)
    assert not marker.exists()
    assert e.value.global_name == refused and e.value.source == str(path)
    msg = str(e.value)
    print(msg)
    assert f"Refusing to unpickle {path}: it asks for the Python global '{refused}'" in msg
    assert "only holds dicts, strings, numbers and numpy arrays" in msg
    assert "MODEL.WEIGHTS_ALLOW_PICKLE True" in msg and "full unpickling" in msg and ".pth state dict" in msg
    assert isinstance(e.value, pickle.UnpicklingError)


@pytest.mark.parametrize("stream, refused", [
    # A dotted name that a default find_class would resolve attribute by attribute.
    (b"\x80\x02cnumpy\nndarray.tofile\n)R.", "numpy.ndarray.tofile"),
    # numpy.load can read pickles itself (allow_pickle), numpy.core other functions are not needed.
    (b"\x80\x02cnumpy\nload\n)R.", "numpy.load"),
    (b"\x80\x02cnumpy.core.multiarray\nfromstring\n)R.", "numpy.core.multiarray.fromstring"),
    (b"\x80\x02ccopy_reg\n_reconstructor\n)R.", "copy_reg._reconstructor"),
    (b"\x80\x02c__builtin__\ngetattr\n)R.", "__builtin__.getattr"),
    (b"\x80\x02ccollections\nCounter\n)R.", "collections.Counter"),
    # INST opcode (protocol 0): module and name on the line, arguments from the mark.
    (b"(S'touch /nonexistent/x'\nios\nsystem\n.", "os.system"),
    # _codecs.encode and bytes() only do what protocol 2 needs for bytes.
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", "_codecs.encode"),
    (b"\x80\x02c_codecs\nencode\nC\x01xX\x06\x00\x00\x00latin1\x86R.", "_codecs.encode"),
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.", "builtins.bytes"),
])
def test_other_globals_are_refused(stream, refused):
    with pytest.raises(UnsafePickleError) as e:
        load_safe_pickle(io.BytesIO(stream))
    assert e.value.global_name == refused
    assert "<pickle stream>" in str(e.value)


def test_protocol2_bytes_helpers_accept_what_python3_writes():
    # _codecs.encode("\xe9", "latin1"): how Python 3 writes b"\xe9" in protocol 2.
    stream = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xa9X\x06\x00\x00\x00latin1\x86R."
    assert load_safe_pickle(io.BytesIO(stream)) == b"\xe9"
    assert load_safe_pickle(io.BytesIO(b"\x80\x02cbuiltins\nbytes\n)R.")) == b""
    assert load_safe_pickle(io.BytesIO(pickle.dumps([b"", b"\x00\xff" * 300], protocol=2))) == [b"", b"\x00\xff" * 300]


def test_persistent_ids_are_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage/0" if isinstance(obj, np.ndarray) else None

    f = io.BytesIO()
    P(f, protocol=2).dump({"conv1_w": np.zeros(2, np.float32)})
    f.seek(0)
    with pytest.raises(UnsafePickleError, match=r"persistent id \('storage/0'\)") as e:
        load_safe_pickle(f)
    assert e.value.global_name is None


def test_extension_codes_are_refused_even_when_cached():
    """copyreg caches what an extension code resolved to, for every unpickler of the
    process: a cached code must not bypass find_class."""
    code = 0x7FFFF0
    copyreg.add_extension("collections", "Counter", code)
    try:
        data = pickle.dumps(collections.Counter(a=1), protocol=2)
        assert b"c" + b"collections" not in data  # written as EXT4, no module name in the stream
        assert pickle.loads(data) == collections.Counter(a=1)  # a normal load fills the cache
        with pytest.raises(UnsafePickleError, match=f"extension code {code}"):
            load_safe_pickle(io.BytesIO(data))
    finally:
        copyreg.remove_extension("collections", "Counter", code)
    # Without any registered code the stream is merely invalid (not a refusal).
    with pytest.raises(ValueError, match="unregistered extension code"):
        load_safe_pickle(io.BytesIO(data))


def test_truncated_or_garbage_streams_are_plain_errors(tmp_path):
    data = pickle.dumps({"blobs": _arrays(3)}, protocol=2)
    for bad in (data[: len(data) // 2], data[:1], b"", b"<html>404 Not Found</html>", b"\x80\x02}q\x01(X"):
        with pytest.raises(Exception) as e:
            load_safe_pickle(io.BytesIO(bad))
        assert not isinstance(e.value, UnsafePickleError), (bad[:20], e.value)
