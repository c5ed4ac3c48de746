import pytest

from emomoe.io import atomic_path, atomic_write_text


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
