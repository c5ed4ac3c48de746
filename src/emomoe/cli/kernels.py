"""`emomoe kernels build` and `emomoe kernels info`: the fused CPU kernels ahead of the first forward."""

from __future__ import annotations

import argparse

import torch

from emomoe import kernels

BUILD_EXAMPLES = """examples:
  emomoe kernels build      # compile now (make setup does), so no training run waits for it
  EMOMOE_KERNELS_CFLAGS=-mno-avx512f emomoe kernels build      # the AVX2 code path, on an AVX-512 CPU
"""
INFO_EXAMPLE = """example:
  emomoe kernels info       # the CPU, the library and whether it is built
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernels",
        help="build the fused CPU kernels now, or show which build this machine uses",
        description="The fused C++ CPU kernels are compiled once per kind of CPU (-march=native) and "
        "cached; without them, or where they cannot be built, the same model runs on PyTorch ops.",
        epilog=BUILD_EXAMPLES + INFO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="compile the kernels unless cached, even after a failed build, and load them",
        description="Compile the kernels for this CPU unless the cache has them, trying again after an "
        "earlier failure, and load them. Prints the library and the CPU; exits non-zero with the reason "
        "if the build fails.",
        epilog=BUILD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.set_defaults(func=_build)
    info = actions.add_parser(
        "info",
        help="print the CPU's vector flags and the state of the library, without building",
        description="Print the CPU's vector flags and the library's path with its state: built (and its "
        "vector instruction set), failed (and why), or not built yet.",
        epilog=INFO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    kernels.load(force=True)
    _print_state(_built())
    return 0


def _info(args: argparse.Namespace) -> int:
    marker = kernels.failure_marker(kernels.library_path())
    if kernels.library_path().is_file():
        state = _built()
    elif marker.is_file():
        state = f"failed: {marker.read_text().strip()}"
    else:
        state = "not built yet: `emomoe kernels build` builds it"
    _print_state(state)
    if not kernels.enabled():
        print(f"{kernels.KERNELS_ENV}=0: switched off, the PyTorch ops run")
    return 0


def _print_state(state: str) -> None:
    print(f"cpu: {kernels.cpu_summary()}")
    print(f"library: {kernels.library_path()}")
    print(f"flags: {' '.join(kernels.compiler_flags())}")
    print(f"state: {state}")


def _built() -> str:
    """Loads the library (cheap once built) to ask which vector code it was compiled for."""
    kernels.load()
    return f"built, {torch.ops.emomoe.vector_isa()} vectors"
