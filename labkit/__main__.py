"""``python -m labkit doctor`` (the only command for now; training lives in ``labkit.train``)."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m labkit doctor [--brief] [--json]")
        return 0 if argv else 2
    if argv[0] == "doctor":
        from labkit.doctor import main as doctor_main

        return doctor_main(argv[1:])
    print(f"unknown command {argv[0]!r}; try: python -m labkit doctor", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
