"""Write pickles the way Python 2 ``cPickle.dump(obj, f, 2)`` wrote Detectron's ``.pkl`` files.

Python 3 cannot produce these byte streams with :mod:`pickle` (it writes ``bytes`` through
``_codecs.encode`` and arrays through ``numpy._core``), so this module emits the opcodes
itself. Python 2 types are modelled by Python 3 ones:

- Python 2 ``str`` (bytes) = ``bytes``: SHORT_BINSTRING / BINSTRING, which Python 3 reads
  back as ``str`` only when told how to decode them (``encoding="latin1"``);
- Python 2 ``unicode`` = ``str``: BINUNICODE;
- numpy arrays as numpy 1.x on Python 2 reduced them: ``numpy.core.multiarray._reconstruct``
  (``numpy.ndarray``, ``(0,)``, ``'b'``), then BUILD with ``(1, shape, dtype, fortran,
  data)`` where ``data`` is a Python 2 ``str``; dtypes as ``numpy.dtype('f4', 0, 1)`` +
  BUILD ``(3, '<', None, None, None, -1, -1, 0)``; memo puts and gets as cPickle did.
"""
from __future__ import annotations

import struct
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["py2_dumps"]


class _Writer:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo: Dict[Tuple[str, Any], int] = {}  # what is fetched again (globals, dtypes)
        self.puts = 0

    def _put(self, key) -> None:
        self.puts += 1  # cPickle numbered its memo from 1
        idx = self.memo[key] = self.puts
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def _get(self, key) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
        return True

    def glob(self, module: str, name: str) -> None:
        if not self._get(("global", (module, name))):
            self.out += b"c" + f"{module}\n{name}\n".encode("ascii")
            self._put(("global", (module, name)))

    def save(self, obj: Any) -> None:
        if obj is None:
            self.out += b"N"
        elif obj is True or obj is False:
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                self.out += b"K" + bytes([obj])
            elif 0 <= obj < 65536:
                self.out += b"M" + struct.pack("<H", obj)
            else:
                self.out += b"J" + struct.pack("<i", obj)
        elif isinstance(obj, float):
            self.out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, bytes):  # Python 2 str
            if len(obj) < 256:
                self.out += b"U" + bytes([len(obj)]) + obj
            else:
                self.out += b"T" + struct.pack("<i", len(obj)) + obj
            self._put(("str", id(obj)))
        elif isinstance(obj, str):  # Python 2 unicode
            data = obj.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(data)) + data
            self._put(("str", id(obj)))
        elif isinstance(obj, tuple):
            if not obj:
                self.out += b")"
                return
            if len(obj) <= 3:
                for x in obj:
                    self.save(x)
                self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
            else:
                self.out += b"("
                for x in obj:
                    self.save(x)
                self.out += b"t"
            self._put(("tuple", id(obj)))
        elif isinstance(obj, dict):
            self.out += b"}"
            self._put(("dict", id(obj)))
            if obj:
                self.out += b"("
                for k, v in obj.items():
                    self.save(k)
                    self.save(v)
                self.out += b"u"
        elif isinstance(obj, np.dtype):
            self.save_dtype(obj)
        elif isinstance(obj, np.ndarray):
            self.save_array(obj)
        else:
            raise TypeError(f"py2_dumps does not write {type(obj).__name__}")

    def save_dtype(self, dt: np.dtype) -> None:
        if self._get(("dtype", dt.str)):
            return
        self.glob("numpy", "dtype")
        self.save((dt.str[1:].encode("ascii"), 0, 1))
        self.out += b"R"
        self._put(("dtype", dt.str))
        self.save((3, dt.str[0].encode("ascii"), None, None, None, -1, -1, 0))
        self.out += b"b"

    def save_array(self, arr: np.ndarray) -> None:
        if arr.dtype.kind not in "biuf":
            raise TypeError("py2_dumps writes numeric arrays only")
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")  # args (subtype, shape, dtype char): (ndarray, (0,), 'b')
        self.save((0,))
        self.save(b"b")
        self.out += b"\x87R"  # TUPLE3, REDUCE
        self._put(("array", id(arr)))
        self.out += b"("  # state: (version, shape, dtype, is_fortran, raw data)
        self.save(1)
        self.save(tuple(int(d) for d in arr.shape))
        self.save_dtype(arr.dtype)
        self.save(False)
        self.save(np.ascontiguousarray(arr).tobytes())
        self.out += b"t"
        self.out += b"b"


def py2_dumps(obj: Any) -> bytes:
    """The protocol 2 stream Python 2 ``cPickle`` wrote for ``obj`` (see the module docstring)."""
    w = _Writer()
    w.save(obj)
    return bytes(w.out + b".")
