"""Render man pages to plain text with the pinned groff from the unpacked `groff-base` package.

Running groff from the unpacked package (not the system's) keeps the rendering identical on every
machine. Pages render as one very long line per paragraph, left-adjusted, without hyphenation,
so the text reads as prose rather than as a justified 80-column terminal layout.
"""

from __future__ import annotations

import gzip
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_GROFF_VERSION = "1.22.4"


def groff_env(groff_root: Path) -> dict[str, str]:
    bin_dir = groff_root / "usr/bin"
    share = groff_root / "usr/share/groff"
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "GROFF_BIN_PATH": str(bin_dir),
        "GROFF_FONT_PATH": str(share / _GROFF_VERSION / "font"),
        "GROFF_TMAC_PATH": ":".join(map(str, (groff_root / "etc/groff", share / _GROFF_VERSION / "tmac", share / "site-tmac"))),
    }


def read_source(path: Path) -> bytes | None:
    """The page's roff source, or None for a `.so` redirect stub (its target is rendered anyway)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return None if data.startswith(b".so ") else data


def render(groff_root: Path, source: bytes, chinese: bool = False) -> str | None:
    """The page as UTF-8 text without its running header and footer; None if groff fails."""
    groff = groff_root / "usr/bin/groff"
    macros = ["-mzh"] if chinese else []
    # -t: tables; LL=1000n: a paragraph per line; HY=0, AD=l: no hyphens, no justification spaces;
    # -P-c -P-b -P-u: plain text without overstrike bold or underline.
    layout = ["-rLL=1000n", "-rHY=0", "-dAD=l", "-P-c", "-P-b", "-P-u"]
    cmd = [str(groff), "-Kutf-8", "-t", *macros, "-mandoc", "-Tutf8", *layout]
    result = subprocess.run(cmd, input=source, capture_output=True, env=groff_env(groff_root))
    if result.returncode != 0:
        return None
    lines = result.stdout.decode("utf-8", errors="replace").split("\n")
    text_lines = [i for i, line in enumerate(lines) if line.strip()]
    if len(text_lines) < 3:
        return None
    return "\n".join(lines[text_lines[0] + 1 : text_lines[-1]])


def _render_file(job: tuple[Path, Path, bool]) -> str | None:
    groff_root, path, chinese = job
    source = read_source(path)
    return None if source is None else render(groff_root, source, chinese)


def render_all(groff_root: Path, paths: list[Path], chinese: bool, num_jobs: int) -> list[str | None]:
    """Render pages in parallel; results are in the order of `paths`.

    Threads suffice: the work happens in the groff child processes.
    """
    jobs = [(groff_root, p, chinese) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
        return list(pool.map(_render_file, jobs))
