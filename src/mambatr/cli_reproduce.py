"""The ``mambatr reproduce`` subcommand: its flags and the side-by-side table (mambatr.reproduce)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mambatr import reproduce
from mambatr.cli_args import add_runtime_args, non_negative_int, positive_int
from mambatr.outputs import check_writable_dir
from mambatr.table import markdown_table


def cmd_reproduce(args: argparse.Namespace) -> None:
    models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    reproduce.plan(args.paper, args.data, models)  # every name and the data checked before any work
    check_writable_dir(args.out, "--out")
    torch.set_num_threads(args.threads)
    result = reproduce.run(
        args.paper,
        args.data,
        args.out,
        models=models,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        overwrite=args.overwrite,
    )
    path = reproduce.write_result(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown_table(reproduce.TABLE_HEADERS, reproduce.table_rows(result)))
        if any(row["derived"] for row in result["rows"]):
            print("* the paper's figure is derived from a sentence of its text (source in the JSON)")
    for note in result["notes"]:
        print(f"not run: {note}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)


def add_reproduce_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reproduce", help="a paper's main table re-run here, each cell beside the paper's figure"
    )
    parser.add_argument("--paper", required=True, choices=reproduce.papers(), help="whose table")
    parser.add_argument(
        "--data",
        required=True,
        help="an ImageNet val folder (official models, pretrained=True from the Hugging Face Hub), or "
        "'fmnist': our testbeds and shipped weights on the Fashion-MNIST test split",
    )
    parser.add_argument(
        "--models",
        help="comma-separated official models whose rows to run, e.g. vim_small,vim_base (with --data "
        "fmnist too: it picks their rows); default: every model of the table with weights to run",
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument(
        "--workers", type=non_negative_int, default=2, help="image-decoding workers (folders only)"
    )
    parser.add_argument(
        "--out", default="runs/reproduce", help="OUT/<paper>/<model>/ keeps finished cells; table.json"
    )
    parser.add_argument("--overwrite", action="store_true", help="start again, dropping the kept cells")
    add_runtime_args(parser, device="cpu or cuda")
    parser.set_defaults(run=cmd_reproduce)
