import hashlib
import os
import re
from pathlib import Path

import pytest

from emomoe.errors import DataError
from emomoe.io import (
    OUTPUT_MARKER,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    create_text,
    read_checksums,
    read_json,
    read_text,
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
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "second"]
    assert (target / OUTPUT_MARKER).read_text().splitlines()[1:] == ["second"]


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


def test_a_changed_digest_does_not_blame_the_file_alone(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    manifest = write_checksums(tmp_path)
    manifest.write_text(manifest.read_text().replace(manifest.read_text()[:4], "0000", 1))
    with pytest.raises(DataError, match=r"meta\.json: checksum mismatch: the file was truncated or altered since it "
                                        r"was written, or its line in checksums\.sha256 was$"):
        verify_checksums(tmp_path)


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
    refuse_existing(tmp_path, force=False)  # an empty folder: nothing to lose
    (tmp_path / "out.json").write_text("{}")
    refuse_existing(tmp_path / "out.json", force=True)
    with pytest.raises(DataError, match="already exists.*force"):
        refuse_existing(tmp_path / "out.json", force=False)


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


def write_folder(path: Path, *names: str) -> None:
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name in names:
            (tmp / name).write_text(name)


def test_a_users_folder_is_never_replaced_even_with_force(tmp_path):
    users = tmp_path / "results"
    users.mkdir()
    for i in range(11):
        (users / f"{i}.json").write_text("{}")
    with pytest.raises(DataError, match=r"results: is a folder emomoe did not write \(no \.emomoe-output inside\), "
                                        r"so it is never replaced"):
        refuse_existing(users, force=True)
    with pytest.raises(DataError, match="emomoe did not write"):
        write_folder(users, "report.md")
    with pytest.raises(DataError, match="results: is a folder; expected a file name"):
        check_output_file(users, force=True)
    assert sorted(p.name for p in users.iterdir()) == [f"{i}.json" for i in sorted(range(11), key=str)]
    assert not list(tmp_path.glob(".*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    refuse_existing(empty, force=True)  # nothing to lose


def test_a_file_never_replaces_a_folder(tmp_path):
    write_folder(tmp_path / "ours", "a")
    with pytest.raises(DataError, match="ours: is a folder; the output is a file"):
        atomic_write_text(tmp_path / "ours", "x")
    assert (tmp_path / "ours" / "a").read_text() == "a"


def test_force_replaces_our_folder_and_keeps_what_was_added_to_it(tmp_path):
    out = tmp_path / "analysis"
    write_folder(out, "report.md", "old.png")
    (out / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        refuse_existing(out, force=False)
    refuse_existing(out, force=True)
    write_folder(out, "report.md", "new.png")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "new.png", "notes.md", "report.md"]
    assert (out / "notes.md").read_text() == "mine"
    write_folder(out, "report.md")  # notes.md is still the user's, and stays again
    assert (out / "notes.md").read_text() == "mine" and not (out / "new.png").exists()
    (out / "notes.md").rename(out / "clash.md")
    with pytest.raises(DataError, match="clash.md: was not written by emomoe, and the new output has an entry"):
        write_folder(out, "report.md", "clash.md")
    assert (out / "clash.md").read_text() == "notes.md" or (out / "clash.md").read_text() == "mine"
    assert not list(tmp_path.glob(".*"))


def test_a_checkpoint_written_before_markers_is_ours_by_its_checksums(tmp_path):
    old = tmp_path / "final"
    old.mkdir()
    (old / "model.yaml").write_text("x")
    write_checksums(old)
    (old / "notes.md").write_text("mine")
    write_folder(old, "model.yaml", "model.safetensors")
    assert sorted(p.name for p in old.iterdir()) == [OUTPUT_MARKER, "model.safetensors", "model.yaml", "notes.md"]


def test_the_fsync_touches_only_the_output_not_the_folder_beside_it(tmp_path):
    neighbours = tmp_path / "data"
    neighbours.mkdir()
    (neighbours / "gone").symlink_to(tmp_path / "nowhere")
    os.mkfifo(neighbours / "pipe")  # opening it to fsync would block forever
    atomic_write_text(tmp_path / "out.json", "{}")
    write_folder(tmp_path / "out", "a")
    assert (tmp_path / "out.json").read_text() == "{}" and not list(tmp_path.glob(".*.tmp"))


def test_a_file_size_limit_is_one_line_like_a_full_disk(tmp_path):
    import resource

    path = tmp_path / "big.bin"
    atomic_write_bytes(path, b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(DataError, match=r"big\.bin: cannot write: the file is larger than the file-size limit "
                                            r"\(ulimit -f\); the previous version, if any, is unchanged$"):
            atomic_write_bytes(path, b"x" * 8192)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".*"))


def test_an_output_where_nothing_can_be_created_is_refused_before_any_work():
    with pytest.raises(DataError, match=r"^/proc/x: cannot be written, nothing can be created in /proc"):
        check_output_dir("/proc/x")
    with pytest.raises(DataError, match=r"^/proc: cannot be written, nothing can be created in /proc"):
        check_output_file("/proc/x.json", force=False)


def test_create_text_claims_a_name_once(tmp_path):
    assert create_text(tmp_path / "config.yaml", "a: 1\n")
    assert not create_text(tmp_path / "config.yaml", "a: 2\n")
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00binary", r"p\.json: not a JSON file: byte 0 is not UTF-8 text \(a binary file\?\)$"),
    (b'{"a": 1,\n "b": }', r"p\.json: not valid JSON \(Expecting value at line 2, column 7\)$"),
    (b"[" * 100_000, r"p\.json: not valid JSON \(RecursionError: "),
    (b"9" * 5000, r"p\.json: not valid JSON \(ValueError: "),
])
def test_a_malformed_user_file_is_one_error_naming_it(tmp_path, content, message):
    (tmp_path / "p.json").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_json(tmp_path / "p.json")


def test_a_folder_fifo_or_missing_file_is_named_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match="pipe: is not a regular file; expected a prompt file$"):
        read_text(tmp_path / "pipe", "prompt file")
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}: is a folder; expected a prompt file$"):
        read_text(tmp_path, "prompt file")
    with pytest.raises(DataError, match="nope.txt: prompt file not found$"):
        read_text(tmp_path / "nope.txt", "prompt file")
