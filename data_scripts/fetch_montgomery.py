#!/usr/bin/env python3
"""Download the real chest X-ray set (Montgomery County, U.S. NLM) for Lab 2.

Usage:
    python data_scripts/fetch_montgomery.py [--root DIR] [--url MIRROR] [--archive PATH]
                                            [--checksum ALGO:HEX] [--no-wait] [--keep-archive]

138 posterior-anterior radiographs with manual left and right lung masks. The archive is
verified against its SHA-256 before anything is extracted, then unpacked to
``<root>/MontgomerySet`` (``<root>`` is ``$LABKIT_DATA`` or ``./data``). Its terms of use
forbid redistribution: the course never ships it, every user downloads it from the NLM (or
from a copy their instructor is allowed to hand out, with ``--archive PATH``). The NLM has
moved its files before; if the address fails, pass the current one with ``--url``.
"""

import sys

from fetching import Dataset, run_command

from labkit.paths import LUNG_DIR

MONTGOMERY = Dataset(
    name="montgomery",
    title="Montgomery County chest X-ray set (U.S. National Library of Medicine, 138 cases)",
    url="http://openi.nlm.nih.gov/imgs/collections/NLM-MontgomeryCXRSet.zip",
    checksum_algorithm="sha256",
    checksum="54601e952315d8f67383e9202a6e145997ade429f54f7e0af44b4e158714f424",
    archive_name="NLM-MontgomeryCXRSet.zip",
    folder_name=LUNG_DIR,
    required=("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"),
    licence=(
        "provided by the U.S. National Library of Medicine for research and teaching; its "
        "terms forbid redistribution."
    ),
    attribution=(
        "Jaeger S., Candemir S., Antani S., Wang Y.-X. J., Lu P.-X., Thoma G., 'Two public "
        "chest X-ray datasets for computer-aided screening of pulmonary diseases', Quantitative "
        "Imaging in Medicine and Surgery 4(6), 475-477 (2014)."
    ),
    redistributable=False,
)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 error, 75 busy)."""
    return run_command(MONTGOMERY, argv)


if __name__ == "__main__":
    sys.exit(main())
