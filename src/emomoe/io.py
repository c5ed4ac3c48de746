"""Safe writes and verified reads.

- Atomic writes: write to a temporary sibling, flush it to disk, then rename, so no reader ever
  sees half a file, and a crash (even SIGKILL or a power cut after the rename) leaves either the
  old or the new version.
- A failed write (full disk, read-only or missing directory, a file where a folder should be)
  is a one-line `DataError` naming the path, and nothing is changed.
- Checksums: a directory can carry `checksums.sha256` (the `sha256sum` format, so
  `sha256sum -c checksums.sha256` checks it too); `verify_checksums` names the damaged file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from emomoe.errors import DataError

CHECKSUMS_FILE = "checksums.sha256"
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
    errno.EEXIST: "a parent of it is a file, not a directory",
    errno.EISDIR: "it is a directory",
}
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
    """Flush a file, or every file of a directory tree and the directories themselves, to disk."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories alike: whatever the block creates at the temporary path
    replaces `path` as a whole. A symlink at `path` is followed: its target is replaced, the link stays.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    with write_errors(_target_name(path), "the previous version, if any, is unchanged"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        target = tmp / path.name
        try:
            yield target
            _fsync(target)
            if path.is_dir():
                # Move the old directory aside first: a rename cannot replace a non-empty directory.
                os.replace(path, tmp / ".old")
            os.replace(target, path)
            _fsync(path.parent)
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


def refuse_existing(path: str | Path, force: bool, what: str = "") -> None:
    """DataError if `path` exists and `force` is not set: outputs are never overwritten by accident."""
    if Path(path).exists() and not force:
        raise DataError(f"{path}: already exists{what} (pass --force, or force=True, to replace it)")


def check_output_dir(path: str | Path) -> None:
    """DataError, before any work, if a directory cannot be created at `path`: a file is there, or above it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file; expected a directory (or a path where one can be created)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: cannot be created, {parent} is a file")
            break


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
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
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


def verify_checksums(directory: str | Path, names: list[str] | None = None) -> None:
    """Raise DataError naming the first file of `directory` whose bytes differ from checksums.sha256.

    `names` limits the check to those files (relative paths); by default every listed file is checked.
    """
    directory = Path(directory)
    expected = read_checksums(directory)
    for name in names if names is not None else expected:
        path = directory / name
        if name not in expected:
            raise DataError(f"{directory / CHECKSUMS_FILE}: has no checksum for {name}")
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in {CHECKSUMS_FILE})")
        if not _verified(path, expected[name]):
            raise DataError(f"{path}: checksum mismatch, the file is damaged (truncated or altered since it was written)")
