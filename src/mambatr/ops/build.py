"""Load the C++ CPU kernels, compiling them now if this installation has none that fit:
``python -m mambatr.ops.build [--verbose]``."""

from __future__ import annotations

import argparse
import sys

from mambatr.ops import _cpu_kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mambatr.ops.build", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    args = parser.parse_args(argv)
    try:
        path = _cpu_kernels.load(verbose=args.verbose)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"mambatr CPU kernels ready ({_cpu_kernels.loaded_from()}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
