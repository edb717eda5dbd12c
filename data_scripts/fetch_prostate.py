#!/usr/bin/env python3
"""Download the real prostate MRI set (Medical Segmentation Decathlon, Task05) for Lab 1.

Usage:
    python data_scripts/fetch_prostate.py [--root DIR] [--url MIRROR] [--archive PATH]
                                          [--checksum ALGO:HEX] [--no-wait] [--keep-archive]

The archive (about 230 MB) is verified against its published MD5 before anything is
extracted, then unpacked to ``<root>/Task05_Prostate`` (``<root>`` is ``$LABKIT_DATA`` or
``./data``). An interrupted download resumes when the command is run again; a second run
when the set is already there does nothing. ``--help`` lists every option.
"""

import sys

from fetching import Dataset, run_command

from labkit.paths import PROSTATE_DIR

PROSTATE = Dataset(
    name="prostate",
    title="Medical Segmentation Decathlon, Task05 Prostate (32 training cases, T2 + ADC MRI)",
    url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar",
    checksum_algorithm="md5",
    checksum="35138f08b1efaef89d7424d2bcc928db",
    archive_name="Task05_Prostate.tar",
    folder_name=PROSTATE_DIR,
    required=("dataset.json", "imagesTr", "labelsTr"),
    licence="CC-BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).",
    attribution=(
        "Antonelli M. et al., 'The Medical Segmentation Decathlon', Nature Communications 13, "
        "4128 (2022); Simpson A. L. et al., 'A large annotated medical image dataset for the "
        "development and evaluation of segmentation algorithms', arXiv:1902.09063 (2019)."
    ),
    redistributable=True,
)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 error, 75 busy)."""
    return run_command(PROSTATE, argv)


if __name__ == "__main__":
    sys.exit(main())
