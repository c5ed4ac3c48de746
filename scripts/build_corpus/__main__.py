"""Build the embedded demo corpus: `python scripts/build_corpus [--raw-dir DIR] [--out DIR]`.

Needs a Debian-based machine with apt (for `apt-get download` and `dpkg-deb`) and the
`corpus` extra (`rdata`). Downloads are cached under the raw directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from build_corpus.build import build_records, write_outputs  # noqa: E402
from build_corpus.extract import Context  # noqa: E402
from build_corpus.fetch import prepare  # noqa: E402
from build_corpus.pins import PACKAGES  # noqa: E402
from build_corpus.sources import SOURCES, TOOL_PACKAGES  # noqa: E402
from emomoe.errors import EmomoeError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, default=REPO / "data/raw", help="download and unpack cache")
    parser.add_argument("--out", type=Path, default=REPO / "src/emomoe/data/embedded", help="output folder")
    parser.add_argument("--jobs", type=int, default=2, help="parallel man page renderers")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        names = sorted({p for s in SOURCES for p in s.packages} | set(TOOL_PACKAGES))
        roots = prepare([PACKAGES[n] for n in names], args.raw_dir.resolve())
        records, stats = build_records(Context(roots, args.jobs))
        manifest = write_outputs(args.out, records, stats)
    except EmomoeError as e:
        print(f"build_corpus: error: {e}", file=sys.stderr)
        return 2
    for domain, entry in manifest["domains"].items():
        print(f"{domain:>10}: {entry['num_documents']:>5} docs {entry['num_bytes'] / 1e6:6.2f} MB", file=sys.stderr)
    print(
        f"wrote {args.out / manifest['file']} ({manifest['num_bytes_compressed'] / 1e6:.2f} MB compressed, "
        f"{manifest['num_documents']} docs) in {time.perf_counter() - start:.0f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
