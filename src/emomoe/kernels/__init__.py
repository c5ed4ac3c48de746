"""Fused CPU kernels in C++ (`cpu.cpp`), compiled once per machine on first use.

`ops()` is `torch.ops.emomoe` once the library is loaded, else None; callers then run their
pure-PyTorch twin, which is also what every non-CPU or non-float32 tensor gets. The library is
built with the host's vector instructions (`-march=native`) by torch's C++ extension builder and
cached under `$EMOMOE_CACHE` (default `~/.cache/emomoe`), keyed by the source, the torch version and
the CPU, so a home directory shared by different machines keeps one build per kind of CPU.

EMOMOE_KERNELS=0 turns the kernels off (the twins run everywhere). A machine without a C++
compiler or ninja logs one warning and runs the twins.

EMOMOE_KERNELS_CFLAGS adds compiler flags (split like a shell line) after the defaults, and to the
cache key: `-mno-avx512f` builds on an AVX-512 machine what an AVX2-only one runs, to check the
numerics of the narrower vectors without such a machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import tempfile
from pathlib import Path

import torch

KERNELS_ENV = "EMOMOE_KERNELS"
CACHE_ENV = "EMOMOE_CACHE"
CFLAGS_ENV = "EMOMOE_KERNELS_CFLAGS"
SOURCE = Path(__file__).with_name("cpu.cpp")

log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get(KERNELS_ENV, "1") != "0"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emomoe"


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags."""
    arch = "-mcpu=native" if platform.machine() in ("arm64", "aarch64") else "-march=native"
    # at::parallel_for is inline: under torch's OpenMP backend its threads come from pragmas that
    # need -fopenmp here. The process then shares torch's OpenMP runtime (loaded first, same soname).
    openmp = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []
    return ["-O3", arch, *openmp, *shlex.split(os.environ.get(CFLAGS_ENV, ""))], openmp


def library_path() -> Path:
    parts = [SOURCE.read_text(), torch.__version__, platform.machine(), _cpu_identity(), *_flags()[0]]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"emomoe_cpu_{key}.so"


def _build(target: Path) -> None:
    from torch.utils import cpp_extension

    cflags, ldflags = _flags()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built in a private directory and renamed into place: a concurrent process (a second test
    # worker, another rank) never loads a half-written library.
    with tempfile.TemporaryDirectory(dir=target.parent) as build_dir:
        cpp_extension.load_inline(
            name=target.stem,
            cpp_sources=[SOURCE.read_text()],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=build_dir,
            is_python_module=False,
            verbose=False,
        )
        # load_inline has loaded the library from the build directory already; the rename keeps
        # the file's inode, so the load from `target` below finds it loaded and registers nothing twice.
        os.replace(Path(build_dir) / f"{target.stem}.so", target)


@functools.cache
def _load() -> bool:
    if not enabled():
        return False
    target = library_path()
    try:
        if not target.is_file():
            log.warning("emomoe: compiling the fused CPU kernels for this machine (once, about 30 s)")
            with _ninja_on_path():
                _build(target)
        torch.ops.load_library(str(target))
    except Exception as e:  # any build or load failure leaves the pure-PyTorch path, which is correct
        log.warning("emomoe: fused CPU kernels unavailable, using PyTorch ops (%s)", str(e).splitlines()[0])
        return False
    return True


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs `ninja` from PATH; the PyPI package (a dependency) installs it beside the
    interpreter, which is not on PATH when a venv's python runs without activating the venv."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError as e:
            raise RuntimeError("ninja is not installed") from e
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def ops():
    """`torch.ops.emomoe` with the fused kernels, or None where they are off or could not be built."""
    return torch.ops.emomoe if _load() else None


_disabled_depth = 0


@contextlib.contextmanager
def disabled():
    """Run the PyTorch twins inside the block, as EMOMOE_KERNELS=0 does for a whole process: for
    timing the two side by side, or to rule the kernels out when chasing a numerical difference."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def usable(*tensors: torch.Tensor) -> bool:
    """The kernels apply: all tensors are float32 CPU tensors and the library is loaded. Tracing
    under torch.compile keeps the PyTorch twins, which inductor fuses itself."""
    if _disabled_depth or torch.compiler.is_compiling():
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return ops() is not None
