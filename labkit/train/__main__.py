"""``python -m labkit.train {vnet,cfcm} [options]``: imports only the framework of the lab asked for."""

from __future__ import annotations

import importlib
import sys

USAGE = """usage: torchrun --nproc_per_node=N -m labkit.train vnet [options]
       python -m labkit.train cfcm --strategy mirrored|multiworker|default [options]
(`python -m labkit.train vnet --help`, or cfcm, lists the options)"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``labkit.train.vnet.main`` or ``labkit.train.cfcm.main``; the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in ("vnet", "cfcm"):
        print(f"unknown lab {argv[0]!r}; choose vnet or cfcm\n\n{USAGE}", file=sys.stderr)
        return 2
    return importlib.import_module(f"labkit.train.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
