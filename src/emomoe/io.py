"""Safe writes and verified reads.

- Atomic writes: write to a temporary sibling, flush it to disk, then rename, so no reader ever
  sees half a file, and a crash (even SIGKILL or a power cut after the rename) leaves either the
  old or the new version.
- A failed write (full disk, a file-size limit, read-only or missing directory, a file where a
  folder should be) is a one-line `DataError` naming the path, and nothing is changed.
- The overwrite rule, for every output: one that exists is replaced only with `force`, and only
  if it is a file or a folder emomoe wrote (`OUTPUT_MARKER` inside, listing what it wrote). A
  user's folder is never deleted, and files added to one of ours since are kept.
- User files are read by `read_text` / `read_json`: a missing, binary, malformed or special
  (FIFO, device) file is a `DataError` naming it, never a traceback or a hang.
- Checksums: a directory can carry `checksums.sha256` (the `sha256sum` format, so
  `sha256sum -c checksums.sha256` checks it too); `verify_checksums` names the damaged file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from emomoe.errors import DataError, EmomoeError

CHECKSUMS_FILE = "checksums.sha256"
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file is larger than the file-size limit (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
    errno.EEXIST: "a parent of it is a file, not a directory",
    errno.EISDIR: "it is a directory",
}
OUTPUT_MARKER = ".emomoe-output"
"""In every folder emomoe writes: the entries it wrote there, one a line below a header."""
_MARKER_HEADER = "# written by emomoe; --force replaces the entries below, and keeps anything else added here\n"
_HASH_BLOCK = 1 << 20
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_TEMPORARY = re.compile(r"^\.(.+)\.[^.]+\.tmp$")


def write_errno(error: BaseException) -> int | None:
    """The errno of a failed write: an OSError's, or the "(os error N)" that safetensors' Rust
    writer puts in its message (it raises SafetensorError, not OSError)."""
    if isinstance(error, OSError):
        return error.errno
    if type(error).__name__ == "SafetensorError" and (found := _OS_ERROR.search(str(error))):
        return int(found.group(1))
    return None


@contextlib.contextmanager
def write_errors(path: str | Path, consequence: str = "nothing was written") -> Iterator[None]:
    """Turn an OS failure to write `path` into a one-line DataError naming it."""
    try:
        yield
    except Exception as e:
        reason = WRITE_ERRNOS.get(write_errno(e))
        if reason is None:
            raise
        raise DataError(f"{path}: cannot write: {reason}; {consequence}") from None


def _fsync(path: Path) -> None:
    """Flush one file or directory entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_written(path: Path) -> None:
    """Flush what an atomic write created at `path`: the file, or the folder's regular files and
    folders (never a link, FIFO or device: flushing those would follow them, or block)."""
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in files:
                if stat.S_ISREG(os.lstat(Path(root) / name).st_mode):
                    _fsync(Path(root) / name)
            _fsync(Path(root))
    elif path.is_file() and not path.is_symlink():
        _fsync(path)


def _written_entries(folder: Path) -> set[str] | None:
    """The entries of `folder` emomoe wrote, as its marker lists them, or (a checkpoint written
    before markers) as its checksums.sha256 does; None if it has neither."""
    try:
        lines = (folder / OUTPUT_MARKER).read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        if not has_checksums(folder):
            return None
        try:
            return {name.split("/")[0] for name in read_checksums(folder)} | {CHECKSUMS_FILE}
        except DataError:
            return set()
    except (OSError, UnicodeDecodeError):
        return set()  # a damaged marker vouches for nothing: every entry is kept
    return {line for line in lines if line and not line.startswith("#")}


def foreign_entries(folder: Path) -> list[Path]:
    """The entries of the existing output folder `folder` that emomoe did not write (kept when it
    is replaced); DataError if the folder is not one of emomoe's and holds anything."""
    entries = sorted(p for p in folder.iterdir() if p.name != OUTPUT_MARKER)
    ours = _written_entries(folder)
    if ours is None:
        if entries:
            raise DataError(
                f"{folder}: is a folder emomoe did not write (no {OUTPUT_MARKER} inside), so it is never replaced; "
                "choose another output, or move it away yourself"
            )
        return []
    return [p for p in entries if p.name not in ours]


def mark_output(folder: Path) -> None:
    """Record the entries of `folder` as emomoe's (see `OUTPUT_MARKER`)."""
    names = sorted(p.name for p in folder.iterdir() if p.name != OUTPUT_MARKER)
    (folder / OUTPUT_MARKER).write_text(_MARKER_HEADER + "".join(f"{name}\n" for name in names))


def move_into_place(new: Path, path: Path) -> None:
    """Rename `new` (beside `path`, written and flushed) onto `path`. A folder is marked as
    emomoe's first; an existing folder at `path` must be emomoe's, and what was added to it since
    moves into the new one."""
    if new.is_dir():
        mark_output(new)
    _fsync_written(new)
    if not path.is_dir() or path.is_symlink():
        os.replace(new, path)
    else:
        if not new.is_dir():
            raise DataError(f"{path}: is a folder; the output is a file, so it is never written there")
        kept = foreign_entries(path)
        clash = [p.name for p in kept if (new / p.name).exists()]
        if clash:
            raise DataError(f"{path / clash[0]}: was not written by emomoe, and the new output has an entry of that name; move it away")
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old.tmp", dir=path.parent))
        try:
            # A rename cannot replace a non-empty directory: the old one moves aside first.
            os.replace(path, aside / path.name)
            os.replace(new, path)
            for entry in kept:
                os.replace(aside / path.name / entry.name, path / entry.name)
            _fsync(path)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories alike: whatever the block creates at the temporary path
    replaces `path` (see `move_into_place`: only a file or a folder emomoe wrote is replaced, and
    a folder that is not is refused before the block runs). A symlink at `path` is followed: its
    target is replaced, the link stays.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    with write_errors(_target_name(path), "the previous version, if any, is unchanged"):
        if path.is_dir():
            foreign_entries(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        target = tmp / path.name
        try:
            yield target
            move_into_place(target, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _target_name(path: Path) -> Path:
    """What the user asked to write: inside another atomic write's temporary folder, its target."""
    found = _TEMPORARY.match(path.parent.name)
    return path.parent.parent / path.name if found and found.group(1) == path.name else path


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def create_text(path: str | Path, text: str) -> bool:
    """Create the file `path` holding `text`, whole, unless something is there: False if it is,
    even if another process created it a moment before (the claim of a run directory)."""
    path = Path(path)
    with write_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if `path` exists
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                return _create_exclusive(path, text)  # a file system without hard links
        finally:
            os.unlink(tmp)
        _fsync(path.parent)
    return True


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def refuse_existing(path: str | Path, force: bool, what: str = "") -> None:
    """DataError, before any work, unless an output may be written at `path`: nothing is there (or
    an empty folder), or `force` is set and it is a file or a folder emomoe wrote."""
    path = Path(path)
    if not path.exists() and not path.is_symlink() or path.is_dir() and not any(path.iterdir()):
        return  # nothing there to lose
    if not force:
        raise DataError(f"{path}: already exists{what} (pass --force, or force=True, to replace it)")
    if path.is_dir():
        foreign_entries(path)


def check_output_file(path: str | Path, force: bool) -> None:
    """`refuse_existing` for an output that is one file: a folder at `path` is never replaced by
    one, and its folder must be creatable."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file name (a folder is never replaced by a file)")
    check_output_dir(path.parent)
    refuse_existing(path, force)


def check_output_dir(path: str | Path) -> None:
    """DataError, before any work, if a directory cannot be created at `path`: a file is there or
    above it, or the nearest existing folder above it takes no new entries (read-only, /proc)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file; expected a directory (or a path where one can be created)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: cannot be created, {parent} is a file")
            _probe(path if path.is_dir() else parent, path)
            break


def _probe(folder: Path, path: Path) -> None:
    """DataError naming `path` unless a folder can be created in `folder` (and removed again)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".emomoe-probe.", dir=folder))
    except OSError as e:
        reason = WRITE_ERRNOS.get(e.errno) or e.strerror or str(e)
        raise DataError(f"{path}: cannot be written, nothing can be created in {folder} ({reason})") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a file the user gave: DataError naming it if it is missing, a folder, not a
    regular file (a FIFO would block), unreadable, or not UTF-8."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a folder; expected a {what}")
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is not a regular file; expected a {what}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a {what}: byte {e.start} is not UTF-8 text (a binary file?)") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON value in a file the user gave (see `read_text`); DataError naming the file and the
    line of a syntax error."""
    return parse_json(read_text(path, what), str(path))


def parse_json(text: str | bytes, where: str) -> Any:
    """The JSON value of `text` (a file, or one line of a jsonl file at `where`); DataError naming
    `where`, the line and column of a syntax error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = f"line {e.lineno}, " if e.doc.count("\n") > e.doc.endswith("\n") else ""  # a jsonl line's `where` has its own
        raise DataError(f"{where}: not valid JSON ({e.msg} at {line}column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # integers of more than 4300 digits; nesting deeper than the stack
        raise DataError(f"{where}: not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None


@contextlib.contextmanager
def parse_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn the KeyError, TypeError, ValueError... of reading the structure of file `path` into a
    DataError naming it: for readers of our own file formats (a damaged one must not be a traceback)."""
    try:
        yield
    except EmomoeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise DataError(f"{path}: not a valid {what} ({type(e).__name__}: {str(e)[:120]})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path, known: Mapping[str, str] | None = None) -> Path:
    """Record the sha256 of every file below `directory` in its checksums.sha256 (written last).

    `known` maps relative paths to digests already computed elsewhere (by the processes that wrote
    those files); every other file is hashed here.
    """
    directory = Path(directory)
    known = known or {}
    names = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != OUTPUT_MARKER
    )
    digests = {name: known.get(name) or file_sha256(directory / name) for name in names if name != CHECKSUMS_FILE}
    lines = [f"{digest}  {name}\n" for name, digest in digests.items()]
    manifest = directory / CHECKSUMS_FILE
    manifest.write_text("".join(lines))
    return manifest


def has_checksums(directory: str | Path) -> bool:
    return (Path(directory) / CHECKSUMS_FILE).is_file()


_VERIFIED: set[tuple] = set()
"""(file identity, digest) of the files this process has hashed: a big checkpoint opened again
(a sweep, the Python API in a notebook) is not read end to end again."""


def _verified(path: Path, digest: str) -> bool:
    """Whether `path` has sha256 `digest`, hashing it only if it changed since it last matched.

    Any write changes the file's ctime, which no user-level tool can set back, so a file with the
    same inode, size, mtime and ctime still has the bytes it was hashed with.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
    if key in _VERIFIED:
        return True
    if file_sha256(path) != digest:
        return False
    _VERIFIED.add(key)
    return True


def read_checksums(directory: str | Path) -> dict[str, str]:
    """The relative path -> sha256 listed in the checksums.sha256 of `directory`; DataError if it
    is missing or damaged."""
    manifest = Path(directory) / CHECKSUMS_FILE
    try:
        text = manifest.read_text()
    except FileNotFoundError:
        raise DataError(f"{manifest}: checksum file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{manifest}: damaged (not text)") from None
    expected = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DataError(f"{manifest}: line {number} is damaged (expected '<sha256>  <file name>')")
        expected[name] = digest
    return expected


def verify_checksums(directory: str | Path, names: list[str] | None = None, *, required: Sequence[str] = ()) -> None:
    """Raise DataError naming the first file of `directory` whose bytes differ from checksums.sha256.

    `names` limits the check to those files (relative paths); by default every listed file is checked.
    `required` files are checked too, and a missing line for one is an error: deleting a line must
    not turn the check off.
    """
    directory = Path(directory)
    expected = read_checksums(directory)
    for name in dict.fromkeys([*(names if names is not None else expected), *required]):
        path = directory / name
        if name not in expected:
            raise DataError(f"{directory / CHECKSUMS_FILE}: has no checksum for {name}")
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in {CHECKSUMS_FILE})")
        if not _verified(path, expected[name]):
            raise DataError(f"{path}: checksum mismatch: the file was truncated or altered since it was written, or its "
                            f"line in {CHECKSUMS_FILE} was")
