"""Atomic writes and output folders: nothing a user computed or owns is lost or half-written.

* `atomic_write_bytes` / `write_json` / `write_csv` / `save_npz` write to a
  temporary file in the same folder and `os.replace` it into place.
* `OutputFolder` (`open_output`) claims the output folder of one command:
  tdntk writes into a new or empty folder, or into a folder holding its own
  earlier result, and refuses any other (it never deletes or overwrites a
  file it did not write). Its manifest, ``tdntk-manifest.json``, names the
  command, a hash of its settings and the files tdntk wrote; replacing a
  result only ever removes or overwrites files listed there. Work in
  progress (stage results, training checkpoints) lives in tdntk's own
  subfolder ``checkpoints/``, so a rerun of the same command and settings
  resumes; other settings are refused unless ``overwrite``. Results are
  written into ``checkpoints/staging/`` and moved in file by file
  (`OutputFolder.staging`), so a failure leaves the previous files as they were.
* `staged_output_dir` does the same for a Python caller writing one set of
  files (the report writers): the folder must be new, empty, or hold an
  earlier tdntk result.

Layout of a claimed folder::

    <out>/tdntk-manifest.json      command, settings, hash, status, files written
    <out>/report.md, ...           the results (listed in the manifest)
    <out>/checkpoints/stages/      one .npz per finished stage (kept: a rerun loads them)
    <out>/checkpoints/train/       training checkpoints (removed when the run completes)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
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
    "settings_digest",
    "file_digest",
    "arrays_digest",
    "OutputError",
    "Interrupted",
    "OutputFolder",
    "open_output",
    "staged_output_dir",
    "MANIFEST_NAME",
    "CHECKPOINTS_NAME",
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


# ---------------------------------------------------------------------- output folders
MANIFEST_NAME = "tdntk-manifest.json"
CHECKPOINTS_NAME = "checkpoints"
_FORMAT = "tdntk-output/1"
_LISTED_MAX = 5  # names shown in a refusal
# staging folders open in this process: `staged_output_dir` writes straight into them
_STAGING: set[Path] = set()

try:  # POSIX: one run per output folder at a time
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputError(ValueError):
    """An output path tdntk refuses; the message names the argument and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``saved`` tells whether `out` keeps work a rerun resumes from."""

    def __init__(self, out: Path, saved: bool):
        super().__init__(f"interrupted; {'work saved' if saved else 'nothing saved'} in {out}")
        self.out, self.saved = out, saved


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def arrays_digest(*arrays) -> str:
    """SHA-256 (hex) of arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def settings_digest(settings) -> str:
    """16 hex digits of the SHA-256 of `settings` as sorted JSON."""
    text = json.dumps(settings, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OutputFolder:
    """The output folder of one run, claimed for `command` with `settings` (module docstring).

    Use `open_output`. Refusals (`OutputError`) happen when claiming, before any
    work: a path that is a file or cannot be created, a non-empty folder without
    a tdntk manifest, another command's or other settings' result (unless
    ``overwrite``), an input file that tdntk wrote there, a folder in use by
    another run.

    Attributes:
        path: the folder.
        checkpoints: ``path / "checkpoints"``, tdntk's working subfolder.
        stages: ``checkpoints / "stages"`` (finished stages' results).
        trainings: ``checkpoints / "train"`` (training checkpoints).
        resumed: an earlier run of the same command and settings left work here.
    """

    def __init__(self, out, command: str | None, settings, overwrite=False, inputs=None,
                 flag: str = "--out"):  # fmt: skip
        self.flag = flag
        self.path = _check_path(out, flag)
        self.command, self.settings, self.overwrite = command, settings, bool(overwrite)
        self.digest = None if settings is None else settings_digest(_versioned(settings))
        self.inputs = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
        self.checkpoints = self.path / CHECKPOINTS_NAME
        self.stages = self.checkpoints / "stages"
        self.trainings = self.checkpoints / "train"
        self.resumed = False
        self._files: list[str] = []
        self._old_manifest: bytes | None = None
        self._created: list[Path] = []
        self._lock = None

    # ------------------------------------------------------------------ claim
    def claim(self) -> OutputFolder:
        """Check the folder, create it, lock it and write the manifest (status "running")."""
        manifest = self._inspect()
        self._check_inputs(manifest)
        self._create()
        try:
            self._take_lock()
        except BaseException as err:
            self._release()  # another run's lock: its files stay as they are
            raise self._unwritable(err) if isinstance(err, PermissionError) else err from None
        try:
            if manifest is not None:
                self._old_manifest = (self.path / MANIFEST_NAME).read_bytes()
                self._files = [str(f) for f in manifest.get("files", [])]
                if self.overwrite or not self._same(manifest):
                    _remove_owned(self.checkpoints, keep_lock=True)
                else:
                    self.resumed = _has_saved(self.checkpoints)
            self._write_manifest("running")
        except BaseException as err:
            self._undo()
            self._release()
            if isinstance(err, PermissionError):
                raise self._unwritable(err) from None
            raise
        return self

    def _inspect(self) -> dict | None:
        """The manifest of the existing folder (None: new or empty); refusals (class docstring)."""
        path, flag = self.path, self.flag
        if not path.exists():
            return None
        if not path.is_dir():
            raise OutputError(
                f"{flag} {path} is a file, not a folder; give the path of a new or empty folder"
            )
        try:
            names = sorted(p.name for p in path.iterdir())
        except PermissionError as err:
            raise self._unwritable(err) from None
        if MANIFEST_NAME not in names:
            if names:
                raise OutputError(
                    f"{flag} {path} is not empty and holds no tdntk result (it has "
                    f"{_preview(names)}); tdntk writes only into a new or empty folder or over "
                    f"its own earlier result, and never deletes files it did not write: choose "
                    f"another {flag} (results of tdntk versions without {MANIFEST_NAME} are not "
                    "recognised: move them away)"
                )
            return None
        manifest = _read_manifest(path / MANIFEST_NAME, flag)
        self._check_replaceable(manifest)
        return manifest

    def _check_replaceable(self, manifest: dict) -> None:
        """Refuse another command's or other settings' result unless ``overwrite``."""
        if self.overwrite:
            return
        path, flag, old = self.path, self.flag, manifest.get("command")
        how = "add --overwrite to replace it" if flag.startswith("--") else "pass overwrite=True"
        fix = f"choose another {flag}, or {how} (only files tdntk wrote there are removed)"
        if self.command is None or old != self.command:
            what = f"`tdntk {old}`" if old else "tdntk's Python API"
            raise OutputError(f"{flag} {path} already holds a result of {what}; {fix}")
        if manifest.get("settings_hash") != self.digest:
            diff = _settings_diff(manifest.get("settings") or {}, self.settings)
            version = _version()
            if manifest.get("tdntk_version") != version:
                diff = f"tdntk version: {manifest.get('tdntk_version')} -> {version}; {diff}"
            raise OutputError(
                f"{flag} {path} holds a `tdntk {old}` result with other settings ({diff}); rerun "
                f"with those settings to resume or reuse it, or {fix}"
            )

    def _same(self, manifest: dict) -> bool:
        return (
            self.command is not None
            and manifest.get("command") == self.command
            and manifest.get("settings_hash") == self.digest
        )

    def _check_inputs(self, manifest: dict | None) -> None:
        """Refuse an input file that tdntk wrote in this folder (a rerun could replace it)."""
        owned = set() if manifest is None else {
            (self.path / f).resolve() for f in manifest.get("files", [])
        }  # fmt: skip
        work = self.checkpoints.resolve()
        for flag, given in self.inputs.items():
            real = given.resolve()
            manifest_path = (self.path / MANIFEST_NAME).resolve()
            if real in owned or work in real.parents or real == manifest_path:
                raise OutputError(
                    f"{flag} {given} is a file tdntk wrote in {self.flag} {self.path} and may "
                    f"replace; copy it elsewhere first, or choose another {self.flag}"
                )

    def _create(self) -> None:
        missing, probe = [], self.path
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        self._created = missing  # deepest first: removed again if the run leaves nothing
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._release()
            raise OutputError(
                f"{self.flag} {self.path}: cannot create the folder "
                f"({err.strerror or err}); choose another path"
            ) from None

    def _take_lock(self) -> None:
        self.checkpoints.mkdir(exist_ok=True)
        if fcntl is None:  # pragma: no cover
            return
        handle = open(self.checkpoints / "lock", "a+b")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(
                f"{self.flag} {self.path} is in use by another tdntk run; wait for it to "
                f"finish, or choose another {self.flag}"
            ) from None
        self._lock = handle

    def _unwritable(self, err: OSError) -> OutputError:
        return OutputError(
            f"{self.flag} {self.path}: cannot write there ({err.strerror or err}); choose a "
            "folder you can write to"
        )

    # ------------------------------------------------------------------ results
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield an empty folder for the results; on success move them into `path` file by file.

        A file in `path` that tdntk did not write and that a result would replace is
        refused (`OutputError`) before anything moves; the previous result's files
        that the new result lacks are removed. On an exception nothing moves.
        """
        tmp = self.checkpoints / "staging"
        _clear(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        key = tmp.resolve()
        _STAGING.add(key)
        try:
            yield tmp
            self._publish(tmp)
        finally:
            _STAGING.discard(key)
            _clear(tmp)

    def _publish(self, tmp: Path) -> None:
        entries = sorted(tmp.iterdir())
        if any(p.is_dir() for p in entries):
            raise RuntimeError(f"staging {tmp}: results must be files, found a folder")
        names = [p.name for p in entries]
        if set(names) & {MANIFEST_NAME, CHECKPOINTS_NAME}:
            raise RuntimeError(f"staging {tmp}: {MANIFEST_NAME}, {CHECKPOINTS_NAME} are reserved")
        listed = set(self._files)
        foreign = [n for n in names if n not in listed and os.path.lexists(self.path / n)]
        if foreign:
            raise OutputError(
                f"{self.flag} {self.path}: {_preview(foreign)} exist(s) there and tdntk did not "
                "write them; move them away and rerun (finished stages are kept, so the rerun "
                "only writes the results)"
            )
        self._files = sorted(listed | set(names))
        self._write_manifest("publishing")  # a kill from here on leaves every file listed
        for name in names:
            os.replace(tmp / name, self.path / name)
        for name in sorted(listed - set(names)):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self._files = names
        self._write_manifest("publishing")

    def complete(self) -> None:
        """Mark the run complete and remove its training checkpoints (stage results stay)."""
        _remove_owned(self.trainings)
        self._write_manifest("complete")

    # ------------------------------------------------------------------ ending
    def close(self, error: BaseException | None) -> bool:
        """Release the folder after the run; on `error`, keep saved work (manifest "stopped")
        or, when nothing was saved, leave the folder as it was found. Returns whether
        work is saved."""
        saved = True
        if error is not None:
            saved = _has_saved(self.checkpoints)
            with contextlib.suppress(OSError):
                if saved:
                    self._write_manifest("stopped")
                else:
                    self._undo()
        self._release()
        return saved

    def _undo(self) -> None:
        _remove_owned(self.checkpoints, keep_lock=True)
        manifest = self.path / MANIFEST_NAME
        if self._old_manifest is not None:
            atomic_write_bytes(manifest, self._old_manifest)
        else:
            with contextlib.suppress(FileNotFoundError):
                manifest.unlink()

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.checkpoints / "lock").unlink()
            self._lock.close()
            self._lock = None
        _rmdir_empty(self.checkpoints)
        if not (self.path / MANIFEST_NAME).exists():
            for folder in self._created:  # deepest first; only what this run created
                if not _rmdir_empty(folder):
                    break

    def _write_manifest(self, status: str) -> None:
        write_json(
            self.path / MANIFEST_NAME,
            {
                "format": _FORMAT,
                "tdntk_version": _version(),
                "command": self.command,
                "settings_hash": self.digest,
                "settings": self.settings,
                "status": status,
                "files": sorted(self._files),
                "note": "tdntk replaces or removes only the files listed here and its "
                f"{CHECKPOINTS_NAME}/ subfolder; it leaves any other file alone",
            },
        )


@contextlib.contextmanager
def open_output(out, command: str | None, settings, overwrite: bool = False, inputs=None,
                flag: str = "--out") -> Iterator[OutputFolder]:  # fmt: skip
    """Claim `out` for `command` (`OutputFolder`), yield it, release it at the end.

    Args:
        out: the folder.
        command: the command's name ("toy", ...), or None for a Python caller's files.
        settings: JSON-able settings whose hash keys the folder (None: no resuming).
        overwrite: replace an earlier tdntk result with other settings (its listed
            files, at the end) and discard its checkpoints.
        inputs: {argument: path} of the run's input files; one tdntk wrote in `out`
            is refused.
        flag: how messages name `out`.
    Raises:
        OutputError: a refusal (before any work).
        Interrupted: on Ctrl-C (KeyboardInterrupt), with whether work was saved.
    """
    folder = OutputFolder(out, command, settings, overwrite, inputs, flag).claim()
    try:
        yield folder
    except KeyboardInterrupt as err:
        saved = folder.close(err)
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(folder.path, saved) from err
    except BaseException as err:
        folder.close(err)
        raise
    folder.close(None)


@contextlib.contextmanager
def staged_output_dir(out, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files move into the folder `out`.

    `out` must be new, empty, or hold an earlier tdntk result (replaced when
    `overwrite`, else refused); files tdntk did not write are never touched. On
    any exception `out` is left as it was. Inside a running command's
    `OutputFolder.staging` folder, writes go straight there.
    """
    out = Path(out)
    if out.resolve() in _STAGING:
        yield out
        return
    with open_output(out, None, None, overwrite, flag="output folder") as folder:
        with folder.staging() as tmp:
            yield tmp
        folder.complete()


# ---------------------------------------------------------------------- helpers
def _check_path(out, flag: str) -> Path:
    if out is None or str(out).strip() == "":
        raise OutputError(f"{flag} is empty; give a folder path (e.g. {flag} runs/result)")
    return Path(out)


def _version() -> str:
    from . import __version__

    return __version__


def _versioned(settings) -> dict:
    """`settings` with the tdntk version: results of another version are not resumed."""
    return {"settings": settings, "tdntk_version": _version()}


def _read_manifest(path: Path, flag: str) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OutputError(
            f"{flag} {path.parent}: its {MANIFEST_NAME} cannot be read ({err}); choose another "
            f"{flag}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise OutputError(
            f"{flag} {path.parent}: {MANIFEST_NAME} is not a tdntk manifest of format "
            f"{_FORMAT}; choose another {flag}"
        )
    return manifest


def _settings_diff(old, new, prefix: str = "") -> str:
    """'key: old -> new' for the leaves that differ (nested dicts flattened), at most 5."""
    lines = []
    keys = set(old) | set(new) if isinstance(old, dict) and isinstance(new, dict) else set()
    for key in sorted(keys):
        a, b = old.get(key, "(none)"), new.get(key, "(none)")
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _settings_diff(a, b, f"{prefix}{key}.")
            lines += [inner] if inner else []
        elif json.dumps(a, default=_jsonable) != json.dumps(b, default=_jsonable):
            lines.append(f"{prefix}{key}: {json.dumps(a, default=_jsonable)} -> "
                         f"{json.dumps(b, default=_jsonable)}")  # fmt: skip
    text = "; ".join(lines[:_LISTED_MAX])
    return text + ("; ..." if len(lines) > _LISTED_MAX else "")


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_MAX])
    return shown + (f" and {len(names) - _LISTED_MAX} more" if len(names) > _LISTED_MAX else "")


def _has_saved(folder: Path) -> bool:
    """Whether `folder` (checkpoints/) holds a stage result or a training checkpoint."""
    return any(
        p.is_file() and p.suffix == ".npz"
        for sub in ("stages", "train")
        for p in (folder / sub).rglob("*")
    )


def _owned(path: Path) -> bool:
    """Files tdntk writes in its checkpoints/ folder: results, checkpoints, atomic temporaries."""
    return path.suffix in (".npz", ".tmp") or path.name == "lock"


def _remove_owned(folder: Path, keep_lock: bool = False) -> None:
    """Remove tdntk's files under `folder` (everything in staging/) and the emptied folders."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            _rmdir_empty(path)
        elif (_owned(path) or "staging" in path.relative_to(folder).parts) and not (
            keep_lock and path.name == "lock"
        ):
            path.unlink()
    _rmdir_empty(folder)


def _clear(folder: Path) -> None:
    """Empty and remove a staging folder (only tdntk writes there)."""
    if folder.is_dir():
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()


def _rmdir_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True
