"""The build pipeline: units → filtered, deduplicated, budgeted selection → documents → files.

Output order is fixed (domain, then source, then uid, then part), every choice is made by a
hash or a sort, and no timestamp is written, so two builds give byte-identical files.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from emomoe.data.corpus import CORPUS_FILENAME, DOMAINS, MANIFEST_FILENAME, MAX_DOC_CHARS
from emomoe.io import atomic_write_bytes, atomic_write_text

from build_corpus.clean import drop_untranslated, is_language, sha256_hex, split_document
from build_corpus.extract import Context, Unit
from build_corpus.pins import PACKAGES
from build_corpus.sources import SOURCES, TOOL_PACKAGES, Source

MIN_UNIT_CHARS = 200
ZSTD_LEVEL = 19
LICENSES_FILENAME = "LICENSES.md"


@dataclass
class SourceStats:
    num_units_seen: int = 0
    num_units_too_short: int = 0
    num_units_wrong_language: int = 0
    num_units_duplicate: int = 0
    num_units_selected: int = 0
    num_documents_duplicate: int = 0
    num_documents: int = 0
    num_chars: int = 0
    num_bytes: int = 0


@dataclass
class Selection:
    units: list[Unit] = field(default_factory=list)
    stats: SourceStats = field(default_factory=SourceStats)


def filter_unit(text: str, lang: str | None) -> str:
    """The unit's text after language filtering ("" when nothing of `lang` is left)."""
    if lang is None:
        return text
    text = drop_untranslated(text, lang)
    return text if is_language(text, lang) else ""


def select_units(units: Iterable[Unit], budget_bytes: int, lang: str | None, seen: set[str]) -> Selection:
    """Keep clean, new units in the order of a hash of their uid until the budget is spent.

    `seen` holds the text hashes of everything selected so far (across sources) and is updated.
    The result does not depend on the order in which `units` arrive.
    """
    selection = Selection()
    stats = selection.stats
    candidates: list[Unit] = []
    for uid, text in units:
        stats.num_units_seen += 1
        if len(text) < MIN_UNIT_CHARS:
            stats.num_units_too_short += 1
            continue
        filtered = filter_unit(text, lang)
        if len(filtered) < MIN_UNIT_CHARS:
            stats.num_units_wrong_language += 1
            continue
        candidates.append((uid, filtered))
    num_bytes = 0
    for uid, text in sorted(candidates, key=lambda unit: (sha256_hex(unit[0]), unit[0])):
        if num_bytes >= budget_bytes:
            break
        digest = sha256_hex(text)
        if digest in seen:
            stats.num_units_duplicate += 1
            continue
        seen.add(digest)
        selection.units.append((uid, text))
        num_bytes += len(text.encode("utf-8"))
    selection.units.sort()
    stats.num_units_selected = len(selection.units)
    return selection


def unit_documents(uid: str, text: str, max_chars: int) -> list[tuple[str, str]]:
    """(source, text) documents of one unit; parts of a split unit are numbered `#1`, `#2`, ..."""
    parts = split_document(text, max_chars)
    if len(parts) == 1:
        return [(uid, parts[0])]
    return [(f"{uid}#{k}", part) for k, part in enumerate(parts, start=1)]


Record = dict[str, str]


def build_records(
    ctx: Context, sources: tuple[Source, ...] = SOURCES, max_chars: int = MAX_DOC_CHARS
) -> tuple[list[Record], dict[str, SourceStats]]:
    """All corpus records in output order, and per-source statistics."""
    seen_units: set[str] = set()
    seen_docs: set[str] = set()
    records: list[Record] = []
    stats: dict[str, SourceStats] = {}
    for source in sorted(sources, key=lambda s: DOMAINS.index(s.domain)):
        start = time.perf_counter()
        selection = select_units(source.extract(ctx), source.budget_bytes, source.lang, seen_units)
        s = stats[source.name] = selection.stats
        for uid, text in selection.units:
            for name, doc in unit_documents(uid, text, max_chars):
                digest = sha256_hex(doc)
                if digest in seen_docs:
                    s.num_documents_duplicate += 1
                    continue
                seen_docs.add(digest)
                records.append({"text": doc, "domain": source.domain, "source": name})
                s.num_documents += 1
                s.num_chars += len(doc)
                s.num_bytes += len(doc.encode("utf-8"))
        print(
            f"{source.domain:>10} {source.name:<20} units {s.num_units_selected:>5}/{s.num_units_seen:<5} "
            f"docs {s.num_documents:>5} {s.num_bytes / 1e6:6.2f} MB {time.perf_counter() - start:5.1f}s",
            file=sys.stderr,
        )
    return records, stats


def to_jsonl(records: list[Record]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def compress(data: bytes) -> bytes:
    # One frame that records its size: the loader checks it to tell a cut-off file.
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return cctx.compress(data)


def build_manifest(records: list[Record], stats: dict[str, SourceStats], jsonl: bytes, compressed: bytes) -> dict:
    domains: dict[str, dict] = {}
    for source in SOURCES:
        entry = domains.setdefault(source.domain, {"num_documents": 0, "num_chars": 0, "num_bytes": 0, "sources": {}})
        s = stats[source.name]
        entry["num_documents"] += s.num_documents
        entry["num_chars"] += s.num_chars
        entry["num_bytes"] += s.num_bytes
        entry["sources"][source.name] = {
            "packages": list(source.packages),
            "budget_bytes": source.budget_bytes,
            "language_filter": source.lang,
            **vars(s),
        }
    used = sorted({p for s in SOURCES for p in s.packages} | set(TOOL_PACKAGES))
    return {
        "file": CORPUS_FILENAME,
        "format": 'zstd-compressed JSON lines: {"text", "domain", "source"}; source = "package:path[::unit][#part]"',
        "sha256_compressed": sha256_hex(compressed),
        "sha256_jsonl": sha256_hex(jsonl),
        "num_bytes_compressed": len(compressed),
        "num_bytes_jsonl": len(jsonl),
        "num_documents": len(records),
        "num_chars": sum(len(r["text"]) for r in records),
        "num_bytes": sum(len(r["text"].encode("utf-8")) for r in records),
        "max_doc_chars": MAX_DOC_CHARS,
        "min_unit_chars": MIN_UNIT_CHARS,
        "domains": {d: domains[d] for d in DOMAINS if d in domains},
        "packages": {
            name: {
                "kind": str(PACKAGES[name].kind),
                "version": PACKAGES[name].version,
                "file": PACKAGES[name].filename,
                "sha256": PACKAGES[name].sha256,
                "license": PACKAGES[name].license,
            }
            for name in used
        },
        "build": {
            "builder": "scripts/build_corpus",
            "python": ".".join(map(str, sys.version_info[:3])),
            "unicode": unicodedata.unidata_version,
            "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "zstd_level": ZSTD_LEVEL,
        },
    }


def licenses_note() -> str:
    """The provenance note shipped beside the corpus, generated from the pins and sources."""
    lines = [
        "# Embedded demo corpus: provenance and licenses",
        "",
        f"`{CORPUS_FILENAME}` is built by `scripts/build_corpus` from the pinned Debian 12 packages and",
        "PyPI wheel below (exact files and sha256 in `MANIFEST.json`). Each document keeps the license of",
        "the package it came from; its `source` field names that package and the path inside it. The",
        "text was only cleaned (Unicode NFC, whitespace, markup and proof stripping, language filtering)",
        "and cut into documents; the complete corresponding sources are the pinned packages themselves,",
        "available from the Debian archive and PyPI.",
        "",
        "| domain | source | package | version | license |",
        "|---|---|---|---|---|",
    ]
    for source in sorted(SOURCES, key=lambda s: DOMAINS.index(s.domain)):
        for name in source.packages:
            p = PACKAGES[name]
            lines.append(f"| {source.domain} | {source.name} | `{p.name}` | {p.version} | {p.license} |")
    lines += [
        "",
        "Tool used in the build (no text taken from it): "
        + ", ".join(f"`{n}` {PACKAGES[n].version} ({PACKAGES[n].license})" for n in TOOL_PACKAGES)
        + ".",
        "",
        "Licenses named by SPDX identifier (GPL, GFDL, MPL, CC-BY-SA, PSF, ...) are in Debian's",
        "`/usr/share/common-licenses/` and at https://spdx.org/licenses/.",
        "",
        "Attribution for the ScanCode license data (CC-BY-4.0): Copyright (c) nexB Inc. and others.",
        "All rights reserved. ScanCode is a trademark of nexB Inc. SPDX-License-Identifier: CC-BY-4.0.",
        "See https://creativecommons.org/licenses/by/4.0/legalcode for the license text.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(out_dir: Path, records: list[Record], stats: dict[str, SourceStats]) -> dict:
    """Write the corpus, its manifest and the provenance note atomically; return the manifest."""
    jsonl = to_jsonl(records)
    compressed = compress(jsonl)
    manifest = build_manifest(records, stats, jsonl, compressed)
    atomic_write_bytes(out_dir / CORPUS_FILENAME, compressed)
    atomic_write_text(out_dir / MANIFEST_FILENAME, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / LICENSES_FILENAME, licenses_note())
    return manifest
