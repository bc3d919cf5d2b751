"""``paretoopt demo``: the study's quick form, ``paretoopt study --quick --out demo_out``.

One code path with the study (:mod:`.cli`): task 1, the core methods and GDPO over a few
paired seeds, the table with CIs, the front and zero-rate plots.
"""

from __future__ import annotations

import sys

from . import cli


def build_parser():  # -> argparse.ArgumentParser
    """The parser of ``paretoopt demo``."""
    return cli.build_parser(demo=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``paretoopt demo``; returns the exit status."""
    return cli.main(argv, demo=True)


if __name__ == "__main__":
    sys.exit(main())
