"""Download the pinned package files into the cache, check their sha256, and unpack them.

Cache layout under the raw directory (git-ignored `data/raw/` by default):
`debs/` and `wheels/` hold the downloads, `unpacked/<name>_<version>/` the file trees.
A second build reuses both and only re-checks the hashes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from emomoe.errors import DataError
from emomoe.io import atomic_path

from build_corpus.pins import Kind, Package


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(package: Package, raw_dir: Path) -> Path:
    """The verified download of `package`, fetched first if it is not cached."""
    folder = raw_dir / ("wheels" if package.kind is Kind.WHEEL else "debs")
    path = folder / package.filename
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _download(package, folder)
    if not path.exists():
        raise DataError(f"{path}: download of {package.name} {package.version} produced no such file")
    actual = file_sha256(path)
    if actual != package.sha256:
        raise DataError(
            f"{path}: sha256 is {actual}, pinned {package.sha256}; delete the file to re-download, "
            "or update scripts/build_corpus/pins.py deliberately"
        )
    return path


def _download(package: Package, folder: Path) -> None:
    if package.kind is Kind.WHEEL:
        spec = f"{package.name}=={package.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(folder), spec]
    else:
        name = package.name if package.arch == "all" else f"{package.name}:{package.arch}"
        spec = f"{name}={package.version}"
        cmd = ["apt-get", "download", spec]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"{' '.join(cmd[:3])} {spec} failed ({last}); run apt-get update, or update the pin")


def unpack(package: Package, artifact: Path, raw_dir: Path) -> Path:
    """The unpacked file tree of a verified download (cached)."""
    root = raw_dir / "unpacked" / f"{package.name}_{package.version}"
    if root.is_dir():
        return root
    with atomic_path(root) as tmp:
        if package.kind is Kind.WHEEL:
            with zipfile.ZipFile(artifact) as z:
                z.extractall(tmp)
        else:
            if shutil.which("dpkg-deb") is None:
                raise DataError(f"{artifact}: dpkg-deb is needed to unpack Debian packages (apt-get install dpkg)")
            subprocess.run(["dpkg-deb", "-x", str(artifact), str(tmp)], check=True)
    return root


def prepare(packages: list[Package], raw_dir: Path) -> dict[str, Path]:
    """Fetch, verify and unpack every package; map package name to its unpacked root."""
    return {p.name: unpack(p, fetch(p, raw_dir), raw_dir) for p in packages}
