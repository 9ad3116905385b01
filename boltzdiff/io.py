"""File I/O shared by every module: atomic writes and checked loads.

Writes go to a temporary file in the destination's folder, are flushed and ``fsync``-ed, and are renamed into
place with ``os.replace`` (then the folder is ``fsync``-ed where the platform allows it), so an interrupted job
never leaves a half-written file where a complete one stood: a reader sees the old file or the new one.

Loads (``load_json``, ``load_npy``, ``load_npz``, ``load_yaml_mapping``, ``torch_load``) turn a missing,
truncated or malformed file into a one-line :class:`boltzdiff.errors.ConfigError` that names the file and what
was expected, instead of a traceback from deep inside numpy/json/torch. ``torch_load`` always uses
``weights_only=True``, so loading a file can never run code.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boltzdiff.errors import ConfigError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: mkstemp creates files readable by their owner only; outputs get the usual permissions instead
_FILE_MODE = _umask_mode()


# ------------------------------------------------------------------------------------------------------------
# atomic writes


def _fsync(path: str | Path, folder: bool = False) -> None:
    """``fsync`` a file that was written and closed, or (``folder``) a folder so that a rename in it is durable;
    a no-op where the platform refuses (e.g. folders on Windows)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(path: str | Path, save_fn: Callable[[str], Any]) -> None:
    """Call ``save_fn(tmp_path)`` (e.g. ``lambda p: torch.save(obj, p)``), fsync, then rename into place.

    The temporary file lives in ``path``'s folder (created if needed); on any failure it is removed and the
    old ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent, folder=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_save(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy scalars/arrays and paths converted)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_npy(path: str | Path, arr: Any) -> None:
    """Write one array in ``.npy`` format to ``path`` atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def save_npz(path: str | Path, arrays: dict) -> None:
    """Write arrays (uncompressed ``.npz``) to ``path`` atomically."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_save(path, write)


# ------------------------------------------------------------------------------------------------------------
# checked loads


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _missing(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: missing; expected {what}")


def _bad(path: Path, what: str, e: BaseException) -> ConfigError:
    return ConfigError(f"{path}: unreadable or truncated ({_first_line(e)}); expected {what}")


def load_json(path: str | Path, what: str = "a JSON file") -> Any:
    """Parse a JSON file; a missing or malformed one raises a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, what, e) from None


def load_npy(path: str | Path, what: str = "a .npy array", mmap_mode: str | None = None) -> Any:
    """Load one ``.npy`` array (no pickles); a missing, truncated or malformed file raises a one-line
    :class:`ConfigError`."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(path, what, e) from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise ConfigError(f"{path}: holds several arrays (.npz); expected {what}")
    return arr


def load_npz(path: str | Path, what: str = "a .npz archive") -> dict:
    """Load every array of an ``.npz`` archive into a dict (no pickles); a missing, truncated or malformed
    file raises a one-line :class:`ConfigError`."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _bad(path, what, e) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path}: holds a single array (.npy); expected {what}")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _bad(path, what, e) from None


def load_yaml_mapping(path: str | Path, what: str = "a YAML mapping") -> dict:
    """Parse a YAML file whose top level must be a mapping (an empty file gives ``{}``); anything else
    raises a one-line :class:`ConfigError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise _bad(path, what, e) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level is a {type(data).__name__}; expected {what}")
    return data


def torch_load(path: str | Path, what: str = "a torch checkpoint", map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain containers and numbers only, never code.

    A missing, truncated or malformed file, or one that needs arbitrary unpickling (a pickled object whose
    loading could run code), raises a one-line :class:`ConfigError`.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise _bad(path, what, e) from None
