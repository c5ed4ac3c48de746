import hashlib
import os
import re
from pathlib import Path

import pytest

from emomoe.errors import DataError
from emomoe.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    read_checksums,
    refuse_existing,
    verify_checksums,
    write_checksums,
)
from tests.fixtures import disk_full_error, small_tmpfs


def test_atomic_write_replaces_file(tmp_path):
    path = tmp_path / "a" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_failed_write_leaves_old_content_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_directory_replaces_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    for content in ("first", "second"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert sorted(p.name for p in target.iterdir()) == ["second"]


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_full_disk_is_one_line_and_keeps_the_previous_version(tmp_path, how):
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "64k") as mounted:
        if how == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        path = disk / "result.bin"
        atomic_write_bytes(path, b"old")
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot write: no space left on the device; "
                                            "the previous version, if any, is unchanged$"):
            with atomic_path(path) as tmp:
                if how == "tmpfs":
                    tmp.write_bytes(b"x" * (1 << 20))
                else:
                    raise disk_full_error()
        assert path.read_bytes() == b"old"
        assert [p.name for p in disk.iterdir()] == ["result.bin"]


def test_output_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file/out.json: cannot write: a parent of it is a file"):
        atomic_write_text(tmp_path / "file" / "out.json", "{}")


def test_a_symlinked_output_stays_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_checksums_name_the_damaged_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.txt").write_text("hello")
    manifest = write_checksums(tmp_path)
    expected = f"{hashlib.sha256(b'abc').hexdigest()}  a.bin\n{hashlib.sha256(b'hello').hexdigest()}  sub/b.txt\n"
    assert manifest.read_text() == expected  # the sha256sum format
    verify_checksums(tmp_path)
    (tmp_path / "sub" / "b.txt").write_text("hellO")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'sub' / 'b.txt'))}: checksum mismatch"):
        verify_checksums(tmp_path)
    verify_checksums(tmp_path, names=["a.bin"])
    (tmp_path / "a.bin").unlink()
    with pytest.raises(DataError, match="a.bin: missing"):
        verify_checksums(tmp_path, names=["a.bin"])


def test_checksums_computed_elsewhere_are_taken_as_given(tmp_path):
    (tmp_path / "mine.bin").write_bytes(b"abc")
    (tmp_path / "theirs.bin").write_bytes(b"def")
    reported = hashlib.sha256(b"what the other process wrote").hexdigest()
    write_checksums(tmp_path, known={"theirs.bin": reported})
    assert read_checksums(tmp_path) == {"mine.bin": hashlib.sha256(b"abc").hexdigest(), "theirs.bin": reported}
    with pytest.raises(DataError, match="theirs.bin: checksum mismatch"):  # the file is not what was reported
        verify_checksums(tmp_path)


def test_refuse_existing(tmp_path):
    refuse_existing(tmp_path / "new", force=False)
    refuse_existing(tmp_path, force=True)
    with pytest.raises(DataError, match="already exists.*force"):
        refuse_existing(tmp_path, force=False)


def test_checksums_hash_a_file_once_until_it_changes(tmp_path, monkeypatch):
    from emomoe import io

    (tmp_path / "a.bin").write_bytes(b"abc")
    write_checksums(tmp_path)
    hashed = []
    monkeypatch.setattr(io, "file_sha256", lambda p: hashed.append(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest())
    verify_checksums(tmp_path)
    verify_checksums(tmp_path)
    assert len(hashed) == 1
    # A flipped byte with the modification time put back is still found (the ctime moved).
    stat = (tmp_path / "a.bin").stat()
    (tmp_path / "a.bin").write_bytes(b"abd")
    os.utime(tmp_path / "a.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match="a.bin: checksum mismatch"):
        verify_checksums(tmp_path)
