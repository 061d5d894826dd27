"""Reading Detectron ``.pkl`` weights with a restricted unpickler: no code from the file runs.

A Detectron (Caffe2) weights file is a Python pickle of ``{"blobs": {name: ndarray}}``
or of a bare ``{name: ndarray}`` dict, sometimes with a few strings or numbers next to
the arrays (``"cfg"``, ``"__author__"``). Full unpickling (``pickle.load``) can call any
importable function the file names, so a crafted ``.pkl`` runs code the moment it is
read. :func:`load_safe_pickle` rebuilds only what such a file holds:

- containers and scalars that pickle encodes with its own opcodes, without naming a
  global: ``dict``, ``list``, ``tuple``, ``str``, ``bytes`` (protocol 3 and up; see
  below for protocol 2), ``bytearray`` (protocol 5), ``int``, ``float``, ``bool``, ``None``;
- numpy arrays, numpy scalars and dtypes, through exactly the globals numpy's own
  ``__reduce__`` writes (listed in :data:`ALLOWED_GLOBALS`), under their numpy 1.x
  names (``numpy.core...``) and their numpy 2.x names (``numpy._core...``);
- ``collections.OrderedDict``, and ``_codecs.encode`` / ``builtins.bytes`` restricted to
  what Python 3 writes for ``bytes`` in a protocol 2 pickle (a latin-1 string, or
  the empty ``bytes()``).

Everything else raises :class:`UnsafePickleError`, which names the file and the refused
global and says what to do.

Python 2 era files (Detectron wrote them with ``cPickle``, protocol 2, array data as
Python 2 ``str``) are read with ``encoding="latin1"``, which turns each such ``str``
back into the same bytes that numpy then takes as array data.
"""
from __future__ import annotations

import collections
import copyreg
import functools
import importlib
import io
import os
import pickle
import pickletools
import warnings
from typing import IO, Any, Dict, Optional, Tuple, Union

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "UnsafePickleError", "load_safe_pickle"]

_ADVICE = (
    "A Detectron weights file only holds dicts, strings, numbers and numpy arrays, and detgn reads "
    "it with a restricted unpickler that rebuilds nothing else, so this file is not a plain Detectron "
    "weights file (or it was crafted to run code when it is unpickled). If you trust the file and it "
    "legitimately holds other Python objects, set MODEL.WEIGHTS_ALLOW_PICKLE True (in Python: "
    "load_weights(model, path, allow_pickle=True)), which reads it with full unpickling and so can run "
    "code from it; or convert it to a .pth state dict (torch.save of {name: tensor}) and load that."
)

# The module.name pairs numpy's __reduce__ writes, under the numpy 1.x name
# (numpy.core) and the numpy 2.x one (numpy._core); both map to the function of the
# numpy installed here. Protocol <= 4 arrays: _reconstruct + ndarray.__setstate__;
# protocol 5: _frombuffer over an in-band bytearray; numpy scalars: scalar(dtype, bytes).
ALLOWED_GLOBALS: Tuple[Tuple[str, str], ...] = (
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # Python 3 writes a non-empty bytes in protocol 2 as _codecs.encode(text, "latin1"),
    # an empty one as bytes() (builtins, or __builtin__ with fix_imports): both are
    # replaced by functions that accept nothing else.
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("__builtin__", "bytes"),
)

_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso_8859_1", "l1"}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asks for something a Detectron weights file never holds; nothing of it ran.

    ``source`` is the file, ``global_name`` the refused ``module.name`` (None for a
    persistent id or an extension code).
    """

    def __init__(self, source: str, what: str, global_name: Optional[str] = None):
        self.source = source
        self.global_name = global_name
        super().__init__(f"Refusing to unpickle {source}: it asks for {what}. {_ADVICE}")


def _first_with(attr: str, *modules: str) -> Any:
    """``attr`` of the first of ``modules`` (fixed names, chosen here) that has it."""
    for name in modules:
        try:
            with warnings.catch_warnings():  # a numpy 1.x shim of numpy._core may warn on import
                warnings.simplefilter("ignore", DeprecationWarning)
                mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
    raise ImportError(f"none of {modules} has {attr!r}: unsupported numpy {np.__version__}")


@functools.lru_cache(maxsize=None)
def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    # numpy 2 renamed numpy.core to numpy._core (the old name still imports, with a
    # DeprecationWarning): take the real functions from the module that has them.
    reconstruct = _first_with("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
    scalar = _first_with("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
    frombuffer = _first_with("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")
    out: Dict[Tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("collections", "OrderedDict"): collections.OrderedDict}
    for core in ("numpy.core", "numpy._core"):
        out[(core + ".multiarray", "_reconstruct")] = reconstruct
        out[(core + ".multiarray", "scalar")] = scalar
        out[(core + ".numeric", "_frombuffer")] = frombuffer
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` only returns the objects of
    :data:`ALLOWED_GLOBALS`, resolved here (the file's module names are never imported),
    and whose ``persistent_load`` refuses every persistent id."""

    def __init__(self, file: IO[bytes], *, source: Optional[str] = None, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self.source = source or str(getattr(file, "name", "<pickle stream>"))

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == ("_codecs", "encode"):
            return self._latin1_encode
        if key in (("builtins", "bytes"), ("__builtin__", "bytes")):
            return self._empty_bytes
        obj = _numpy_globals().get(key)
        if obj is None:
            shown = f"{module}.{name}"
            raise UnsafePickleError(self.source, f"the Python global {shown[:200]!r}", global_name=shown)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self.source, f"an object by persistent id ({str(pid)[:100]!r})")

    def _latin1_encode(self, text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """``_codecs.encode`` as protocol 2 uses it for bytes: a str in latin-1, nothing else."""
        if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
            raise UnsafePickleError(self.source, f"_codecs.encode with encoding {str(encoding)[:40]!r} "
                                    f"on a {type(text).__name__} (only a latin-1 string is bytes data)",
                                    global_name="_codecs.encode")
        return text.encode("latin-1")

    def _empty_bytes(self, *args: Any) -> bytes:
        """``bytes()`` as protocol 2 writes an empty bytes; any argument is refused."""
        if args:
            raise UnsafePickleError(self.source, "builtins.bytes with arguments (only bytes() is bytes data)",
                                    global_name="builtins.bytes")
        return b""


def _refuse_extension_codes(f: IO[bytes], source: str) -> None:
    """Refuse EXT1/EXT2/EXT4 opcodes (scan only; ``f`` is rewound to where it was).

    An extension code reaches ``find_class`` the first time it is read, but later reads
    take the object from ``copyreg``'s process-wide cache, filled by any earlier full
    unpickling. Only needed when some code registered extension codes."""
    start = f.tell()
    try:
        for op, arg, _ in pickletools.genops(f):
            if op.name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafePickleError(source, f"a global by extension code {arg}")
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed: the real load would fail too; say so here
        raise pickle.UnpicklingError(f"{type(e).__name__}: {e}") from None
    finally:
        f.seek(start)


def _load(f: IO[bytes], source: str, encoding: str) -> Any:
    if getattr(copyreg, "_inverted_registry", True):  # extension codes registered (or unknown Python)
        if not (hasattr(f, "seekable") and f.seekable()):
            f = io.BytesIO(f.read())
        _refuse_extension_codes(f, source)
    return RestrictedUnpickler(f, source=source, encoding=encoding).load()


def load_safe_pickle(path_or_file: Union[str, "os.PathLike[str]", IO[bytes]], *, encoding: str = "latin1") -> Any:
    """Unpickle a Detectron weights file (a path or a binary file object) without running its code.

    Why this is safe: in a pickle, the only ways to reach a Python object that is not
    plain data are the opcodes that name a global (GLOBAL, STACK_GLOBAL, INST, and
    EXT1/EXT2/EXT4 through ``copyreg``'s extension registry) and persistent ids
    (PERSID, BINPERSID). Every global goes through :meth:`RestrictedUnpickler.find_class`,
    which returns only the numpy constructors, ``OrderedDict`` and the two bytes helpers
    of :data:`ALLOWED_GLOBALS` (objects resolved here, never imported by the name the
    file gives) and raises :class:`UnsafePickleError` for any other; OBJ, NEWOBJ and
    REDUCE can then only call those; BUILD only calls ``__setstate__`` of the numpy
    objects or fills an ``OrderedDict``'s attributes. Persistent ids are refused, and
    extension codes too when any are registered (their cache would bypass
    ``find_class``). So the file can build dicts, lists, tuples, strings, bytes, numbers,
    numpy arrays, numpy scalars and dtypes, and nothing else; an object-dtype array can
    only hold those same objects (they are not weights: callers should skip them).

    Args:
        path_or_file: a ``.pkl`` path or a binary file object (messages name its ``name``).
        encoding: how Python 2 ``str`` objects are decoded; ``"latin1"`` (the default)
            gives back their bytes exactly, which numpy needs for array data.

    Returns:
        the unpickled object (for Detectron files a dict).

    Raises:
        UnsafePickleError: the file asks for anything else (nothing of it ran).
        pickle.UnpicklingError, EOFError, ValueError, ...: a truncated or malformed file.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        source = os.fspath(path_or_file)
        with open(source, "rb") as f:
            return _load(f, source, encoding)
    return _load(path_or_file, str(getattr(path_or_file, "name", "<pickle stream>")), encoding)
