"""The exact package files the corpus is built from (Debian 12 "bookworm" and PyPI).

A build downloads these versions and refuses any file whose sha256 differs, so the corpus can
be rebuilt byte for byte. When Debian drops a pinned version from its mirrors, update the
version and sha256 here, rebuild, and commit the new corpus and manifest together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    DEB = "deb"
    """A Debian binary package, fetched with `apt-get download`, unpacked with `dpkg-deb -x`."""
    WHEEL = "wheel"
    """A PyPI wheel, fetched with `pip download --no-deps`, unpacked with `zipfile`."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    license: str
    kind: Kind = Kind.DEB
    arch: str = "all"
    """Debian architecture of the file ("all" for architecture-independent packages)."""

    @property
    def filename(self) -> str:
        if self.kind is Kind.WHEEL:
            return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


_MAN_PAGES_LICENSE = (
    "various free licenses (Linux-man-pages-copyleft, GPL-2.0-or-later, BSD, MIT); see the package's copyright file"
)

PACKAGES: dict[str, Package] = {
    p.name: p
    for p in [
        Package(
            "libpython3.11-minimal", "3.11.2-6+deb12u9",
            sha256="69f41cfa3f4ba17284e538f843069d7529c53c207d2ae17a5b02785944870e33",
            license="PSF-2.0",
            arch="amd64",
        ),
        Package(
            "libpython3.11-stdlib", "3.11.2-6+deb12u9",
            sha256="10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53",
            license="PSF-2.0",
            arch="amd64",
        ),
        Package(
            "licensedcode-data", "32.1.0",
            sha256="18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96",
            license="CC-BY-4.0 (ScanCode data); each license text keeps its own terms",
            kind=Kind.WHEEL,
        ),
        Package(
            "metamath-databases", "0.0.0~20210101.git55fe226-2",
            sha256="c72523c221db6c1039fa909150f9c53fb9175809792f2e80e55e1baa965445a1",
            license="CC0-1.0 (set.mm)",
        ),
        Package(
            "pari-doc", "2.15.2-1",
            sha256="6806e4ab123811d7234dd3330941a0ab777562708109ccbce7fc8907226deddc",
            license="GPL-2.0-or-later",
        ),
        Package(
            "r-cran-janeaustenr", "1.0.0-1",
            sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            license="MIT (package); the novels are in the public domain",
        ),
        Package(
            "sword-text-kjv", "14.3-1",
            sha256="9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
            license="public-domain (King James Version; Crown patent in the UK)",
        ),
        Package(
            "manpages", "6.03-2",
            sha256="efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91",
            license=_MAN_PAGES_LICENSE,
        ),
        Package(
            "manpages-dev", "6.03-2",
            sha256="96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838",
            license=_MAN_PAGES_LICENSE,
        ),
        Package(
            "python3.11-doc", "3.11.2-6+deb12u9",
            sha256="5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
            license="PSF-2.0",
        ),
        Package(
            "manpages-de", "4.18.1-1",
            sha256="37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978",
            license="GPL-3.0-or-later (translations); originals under their own free licenses",
        ),
        Package(
            "libreoffice-help-de", "4:7.4.7-1+deb12u14",
            sha256="00490b63c509ac96f7f212d6a6e40452d3e0d1f97ccf4b824dd5ec4c01e8277f",
            license="MPL-2.0",
        ),
        Package(
            "manpages-zh", "1.6.4.0-1",
            sha256="81bae29495f6445db290e3f329f1203eb19b651c2a7ea165b74ebdc853a32ac1",
            license="GFDL-1.2-or-later",
        ),
        Package(
            "libreoffice-help-zh-cn", "4:7.4.7-1+deb12u14",
            sha256="db867cdece4c2f9c7eebe65e519c6cf386fdcf49d6e061db3dffec893b3e1dee",
            license="MPL-2.0",
        ),
        Package(
            "debian-handbook", "11.20220922",
            sha256="3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa",
            license="GPL-2.0-or-later or CC-BY-SA-3.0",
        ),
        # Not a text source: the man page renderer, pinned so that rendering is reproducible.
        Package(
            "groff-base", "1.22.4-10",
            sha256="3de38b55bcccbdaf56c030d5011c6afc76bf6fdc8986ae4f1b2087eef0ddcad0",
            license="GPL-3.0-or-later",
            arch="amd64",
        ),
    ]
}
