"""``python -m labkit.train {vnet,cfcm} [options]``: import only the framework of the lab asked for."""

from __future__ import annotations

import importlib
import sys

from labkit.train import LABS

USAGE = """usage: python -m labkit.train {vnet,cfcm} [options]
       torchrun --nproc_per_node=N -m labkit.train vnet --profile gpu [--run-name NAME] [--max-epochs E]
       python -m labkit.train cfcm --strategy mirrored|multiworker|default [--run-name NAME]

`python -m labkit.train vnet --help` (or cfcm) lists the options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``labkit.train.vnet.main`` or ``labkit.train.cfcm.main``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    lab, rest = argv[0], argv[1:]
    if lab not in LABS:
        print(f"unknown lab {lab!r}; choose one of {', '.join(LABS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"labkit.train.{lab}")  # imports that lab's framework only
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
