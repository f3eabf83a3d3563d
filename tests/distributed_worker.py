"""A torchrun worker for tests: one rank raises before the collective the others wait in."""

import argparse
import os

from mambatr.cli import main

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, required=True)
parser.add_argument("--data", required=True)
args = parser.parse_args()
if int(os.environ["RANK"]) == args.fail_rank:
    raise RuntimeError(f"rank {args.fail_rank} failed on purpose")
main(["eval", "--model", "vim_fmnist", "--data", args.data, "--batch-size", "32", "--json"])
