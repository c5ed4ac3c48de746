"""Fused CPU kernels in C++ (`cpu.cpp`), compiled once per machine.

`ops()` is `torch.ops.emomoe` once the library is loaded, else None; callers then run their
pure-PyTorch twin (`emomoe.model.kernel_twins.TWINS` lists the pairs), which is also what every non-CPU or
non-float32 tensor gets. The library is built with the host's vector instructions
(`-march=native`) by torch's C++ extension builder and cached under `$EMOMOE_CACHE` (default
`~/.cache/emomoe`), keyed by the source, the torch version, the CPU and the flags, so a home
directory shared by different machines keeps one build per kind of CPU.

`emomoe kernels build` (run by `make setup`) builds it ahead of time; otherwise the first use
does. The build holds a file lock beside the library, so concurrent processes (test workers,
torchrun ranks) build it once and load the same file. A failed build leaves `<key>.failed` with
its reason, said in one line by the process that failed (a missing compiler is found before
compiling): later processes run the twins without a word instead of compiling again, until
`emomoe kernels build` retries (`emomoe kernels info` shows the reason).

EMOMOE_KERNELS=0 turns the kernels off (the twins run everywhere).

EMOMOE_KERNELS_CFLAGS adds compiler flags (split like a shell line) after the defaults, and to the
cache key: `-mno-avx512f` builds on an AVX-512 machine what an AVX2-only one runs, to check the
numerics of the narrower vectors without such a machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

import torch

from emomoe.errors import EmomoeError
from emomoe.io import atomic_write_text

KERNELS_ENV = "EMOMOE_KERNELS"
CACHE_ENV = "EMOMOE_CACHE"
CFLAGS_ENV = "EMOMOE_KERNELS_CFLAGS"
SOURCE = Path(__file__).with_name("cpu.cpp")
COMPILING = "emomoe: compiling the fused CPU kernels for this machine (once, about 40 s)"
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16",
                "amx_tile", "asimd", "sve", "sve2")
"""The CPU flags that decide what -march=native compiles (x86 and ARM names, as Linux lists them)."""

log = logging.getLogger(__name__)


class BuildFailed(EmomoeError):
    """The library could not be built here (no compiler or ninja, or a compiler error)."""

    def __init__(self, reason: str, *, remembered: bool = False):
        super().__init__(reason)
        self.remembered = remembered
        """An earlier process's failure, read from its marker: said once, by that process."""


def enabled() -> bool:
    return os.environ.get(KERNELS_ENV, "1") != "0"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emomoe"


def _cpuinfo_field(*names: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(names):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    return _cpuinfo_field("flags", "Features") or platform.processor() or platform.machine()


def cpu_summary() -> str:
    """One line: the CPU's model and the vector extensions it has among `VECTOR_FLAGS`."""
    model = _cpuinfo_field("model name", "Model") or platform.processor() or platform.machine()
    present = set((_cpuinfo_field("flags", "Features") or "").split())
    return f"{model}: {' '.join(f for f in VECTOR_FLAGS if f in present) or 'no vector flags listed'}"


def compiler_flags() -> list[str]:
    """What the library is compiled with, and keyed by."""
    return _flags()[0]


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags."""
    arch = "-mcpu=native" if platform.machine() in ("arm64", "aarch64") else "-march=native"
    # at::parallel_for is inline: under torch's OpenMP backend its threads come from pragmas that
    # need -fopenmp here. The process then shares torch's OpenMP runtime (loaded first, same soname).
    openmp = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []
    return ["-O3", arch, *openmp, *shlex.split(os.environ.get(CFLAGS_ENV, ""))], openmp


def library_path() -> Path:
    parts = [SOURCE.read_text(), torch.__version__, platform.machine(), _cpu_identity(), *compiler_flags()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"emomoe_cpu_{key}.so"


def failure_marker(library: Path) -> Path:
    """Holds the one-line reason the build of `library` failed, while it stays failed."""
    return library.with_suffix(".failed")


def _compile(target: Path) -> None:
    """Compile into a private directory, which also loads the library into this process, and
    rename it to `target`: a process killed mid-build leaves no half-written library behind."""
    from torch.utils import cpp_extension

    cflags, ldflags = _flags()
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
        os.replace(Path(build_dir) / f"{target.stem}.so", target)


def _reason(error: Exception) -> str:
    """One line saying why a build failed: torch puts the whole ninja log in its message, whose
    first line only names the extension; the compiler's or the shell's first error says more."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    found = next((line for line in lines[1:] if re.search(r"error:|not found|No such file", line)), None)
    return found or lines[0]


@contextlib.contextmanager
def _locked(library: Path):
    """Only one process at a time checks, builds and renames `library`. The lock file stays:
    removing it would let a third process lock a new file while a second holds the old one."""
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(library.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def build(force: bool = False) -> tuple[Path, bool]:
    """The library's path, compiled here first unless it is in the cache, and whether this
    process compiled it (and has therefore loaded it). A remembered failure raises BuildFailed
    again without compiling, unless `force`."""
    target = library_path()
    marker = failure_marker(target)
    with _locked(target):
        if target.is_file():
            return target, False
        if marker.is_file() and not force:
            raise BuildFailed(f"{marker.read_text().strip()} (remembered from an earlier build; "
                              "`emomoe kernels build` tries again)", remembered=True)
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:  # before torch's builder, which warns at length first
            _remember(marker, f"no C++ compiler: {compiler} not found (set CXX, or install g++)")
        log.warning(COMPILING)
        try:
            with _ninja_on_path():
                _compile(target)
        except Exception as e:
            _remember(marker, _reason(e), e)
        marker.unlink(missing_ok=True)
    return target, True


def _remember(marker: Path, reason: str, error: Exception | None = None) -> NoReturn:
    """Raise BuildFailed(reason), remembered in `marker` for later processes."""
    # Not remembering is the lesser harm: the next process tries, and warns, again.
    with contextlib.suppress(OSError, EmomoeError):
        atomic_write_text(marker, reason + "\n")
    raise BuildFailed(reason) from error


_loaded: Path | None = None
_loading = threading.Lock()


def load(force: bool = False) -> Path:
    """Build the library unless it is cached (see `build`) and load it into this process, once."""
    global _loaded
    with _loading:
        if _loaded is None:
            target, built_here = build(force)
            if not built_here:  # else load_inline has loaded it, from the build directory
                torch.ops.load_library(str(target))
            _loaded = target
    return _loaded


@functools.cache
def _available() -> bool:
    if not enabled():
        return False
    try:
        load()
    except Exception as e:  # any build or load failure leaves the pure-PyTorch path, which is correct
        reason = str(e) if isinstance(e, BuildFailed) else _reason(e)
        # Said once per machine: by the process that failed, not by every later one (`emomoe kernels info`).
        level = logging.DEBUG if getattr(e, "remembered", False) else logging.WARNING
        log.log(level, "emomoe: fused CPU kernels unavailable, using PyTorch ops (%s)", reason)
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
    return torch.ops.emomoe if _available() else None


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
