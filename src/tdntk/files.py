"""Atomic writes and output folders: nothing a user computed is lost or left half-written.

* `atomic_write_bytes` / `write_json` / `write_csv` / `save_npz` write to a
  temporary file in the same folder and `os.replace` it into place.
* `staged_output_dir` builds an output folder under a temporary name and
  renames it into place only when the work succeeds, so a failed run leaves
  nothing partial behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_write_bytes",
    "write_text",
    "write_json",
    "write_csv",
    "save_npz",
    "staged_output_dir",
]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path, obj) -> Path:
    """Write `obj` as indented JSON (NumPy arrays and scalars allowed)."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=True) + "\n")


def write_csv(path, columns: Mapping[str, Sequence]) -> Path:
    """Write equal-length columns {name: values} as a CSV with a header row."""
    names = list(columns)
    arrays = [np.asarray(columns[k]).reshape(-1) for k in names]
    lengths = {a.size for a in arrays}
    if len(lengths) > 1:
        sizes = {k: a.size for k, a in zip(names, arrays, strict=True)}
        raise ValueError(f"write_csv: columns differ in length: {sizes}")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(names)
    for row in zip(*arrays, strict=True):
        writer.writerow([_cell(v) for v in row])
    return write_text(path, buf.getvalue())


def _cell(v):
    if isinstance(v, np.floating | float):
        return repr(float(v))
    return v.item() if isinstance(v, np.generic) else v


def save_npz(path, **arrays) -> Path:
    """`np.savez` written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def staged_output_dir(out, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder of `out`; on success it replaces `out`.

    On any exception the temporary folder is removed and `out` is untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
