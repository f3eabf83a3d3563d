"""What the ``mambatr`` command line accepts: the shared argument groups (model, data, runtime,
reduction) and the typed options the commands hand to their helpers instead of the whole namespace.

Every mistake a user can make on the command line is a ``ValueError`` (or argparse's own exit 2),
raised before any work starts; ``mambatr.cli.main`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import NoReturn, TypeVar

import torch

from mambatr.distributed import SINGLE, Context
from mambatr.models import list_models
from mambatr.reduction import METHODS, ReductionReport, apply
from mambatr.reduction.recipe import Recipe
from mambatr.reduction.schedule import MAX_FLOPS_REDUCTION, Schedule

# The reduction flags that mean nothing without --method, besides each method's own options
REDUCTION_FLAGS = ("flops_reduction", "ratio", "layers", "option", "schedule")
CHECKPOINT_HELP = "weights file; default: the model's shipped weights"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors on stderr and exit status 2, like the commands' own errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, limits, thread numbers)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up runs, worker processes)."""
    return _int_at_least(text, 0, "an integer >= 0")


def device_name(text: str) -> str:
    """argparse type: ``cpu``, or ``cuda`` / ``cuda:N`` when this PyTorch build sees that GPU."""
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if text != "cpu" and match is None:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if match is not None:
        if not torch.backends.cuda.is_built():
            raise argparse.ArgumentTypeError(
                f"{text}: this PyTorch build ({torch.__version__}) has no CUDA support; use cpu"
            )
        count = torch.cuda.device_count()
        index = int(match[1] or 0)
        if index >= count:
            seen = f"only {count} CUDA device(s) are visible" if count else "no CUDA device is visible"
            raise argparse.ArgumentTypeError(f"{text}: {seen}")
    return text


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def flag(name: str) -> str:
    """The command-line flag of a keyword argument: ``flops_reduction`` -> ``--flops-reduction``."""
    return "--" + name.replace("_", "-")


@contextmanager
def flag_names(names: Iterable[str]) -> Iterator[None]:
    """Re-raise a ValueError of the Python API with its argument names as this CLI's flags
    (``flops_reduction`` -> ``--flops-reduction``): the user typed flags, not keyword arguments."""
    try:
        yield
    except ValueError as error:
        pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
        raise ValueError(pattern.sub(lambda m: flag(m[1]), str(error))) from error


def method_options() -> dict[str, str]:
    """Every option of a registered method -> its help: which methods take it, their values and defaults."""
    takers: dict[str, list[str]] = {}
    for name, method in sorted(METHODS.items()):
        for key, (default, allowed) in method.options.items():
            values = ", ".join(map(str, allowed)) if isinstance(allowed, tuple) else allowed.__name__
            takers.setdefault(key, []).append(f"{name}: {values} (default {default})")
    return {key: "; ".join(parts) for key, parts in sorted(takers.items())}


METHOD_OPTIONS = method_options()


# ------------------------------------------------------------------------------------ argument groups


def add_model_args(parser: argparse.ArgumentParser, checkpoint: str | None = CHECKPOINT_HELP) -> None:
    """--model and, with its help text, --checkpoint."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="vim_fmnist", help=f"one of: {', '.join(list_models())}")
    if checkpoint is not None:
        group.add_argument("--checkpoint", help=checkpoint)


def add_data_args(
    parser: argparse.ArgumentParser,
    data: str | None = "Fashion-MNIST directory",
    splits: tuple[str, ...] = (),
    limit: str | None = None,
    batch_size: int | None = 256,
    workers: bool = False,
    video: bool = False,
) -> None:
    """What is given of: --data (help text ``data``), --split (``splits``, the first the default),
    --limit (help text ``limit``), --batch-size, --workers, and the video views."""
    group = parser.add_argument_group("data")
    if data is not None:
        group.add_argument("--data", help=data)
    if splits:
        help_text = "Fashion-MNIST split" + (" (never test)" if "test" not in splits else "")
        group.add_argument("--split", default=splits[0], choices=splits, help=help_text)
    if limit is not None:
        group.add_argument("--limit", type=positive_int, help=limit)
    if batch_size is not None:
        group.add_argument("--batch-size", type=positive_int, default=batch_size)
    if workers:
        group.add_argument(
            "--workers", type=non_negative_int, default=2, help="image-decoding workers (folders only)"
        )
    if video:
        group.add_argument(
            "--views",
            default="1x1",
            help="video models: clips x crops per video, averaged (Kinetics test: 4x3)",
        )
        group.add_argument(
            "--annotation", help="video models: annotation file (default: DATA/test.csv, the official layout)"
        )


def add_runtime_args(
    parser: argparse.ArgumentParser,
    threads: bool = True,
    device: str | None = "cpu or cuda",
    json: bool = True,
) -> None:
    """--threads, --device (help text ``device``) and --json, where given."""
    group = parser.add_argument_group("runtime")
    if threads:
        group.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    if device is not None:
        group.add_argument("--device", type=device_name, default="cpu", help=device)
    if json:
        group.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def add_method_option_args(group: argparse._ArgumentGroup) -> None:
    """--option KEY=VALUE and one flag per option of any registered method (typed by that method)."""
    group.add_argument("--option", action="append", metavar="KEY=VALUE", help="any method option")
    for key, help_text in METHOD_OPTIONS.items():
        group.add_argument(flag(key), dest=key, metavar="VALUE", help=help_text)


def add_reduction_args(parser: argparse.ArgumentParser) -> None:
    """--method, its amount (--flops-reduction or --ratio), --layers or --schedule, and its options."""
    group = parser.add_argument_group("token reduction (every flag but --method needs --method)")
    group.add_argument("--method", choices=sorted(METHODS), help="token-reduction method (default: none)")
    group.add_argument(
        "--flops-reduction",
        type=float,
        help=f"FLOPs-reduction target in (0, {MAX_FLOPS_REDUCTION}), e.g. 0.3",
    )
    group.add_argument("--ratio", type=float, help="the method's own amount instead of a FLOPs target")
    group.add_argument(
        "--layers", help="comma-separated 0-indexed blocks to reduce after (default: per depth)"
    )
    group.add_argument(
        "--schedule",
        metavar="FILE",
        help="a schedule from `mambatr calibrate` (fixes the layers, counts and options)",
    )
    group.add_argument(
        "--recipe",
        metavar="FILE",
        help="a recipe from `mambatr tune` (fixes the method, options and schedule; no --method needed)",
    )
    add_method_option_args(group)


# ------------------------------------------------------------------------------------ typed options

Options = TypeVar("Options")


def options_from(kind: type[Options], args: argparse.Namespace) -> Options:
    """A typed options object from the namespace: each field from the flag of its name, where the
    command has that flag, else the field's default."""
    return kind(**{f.name: getattr(args, f.name) for f in fields(kind) if hasattr(args, f.name)})


@dataclass(frozen=True)
class ModelArgs:
    """Which model, and which weights (None: the shipped ones)."""

    model: str = "vim_fmnist"
    checkpoint: str | None = None


@dataclass(frozen=True)
class DataArgs:
    """Where the inputs come from and how they are batched."""

    data: str | None = None
    split: str = "test"
    limit: int | None = None
    batch_size: int = 256
    workers: int = 2
    views: str = "1x1"
    annotation: str | None = None


@dataclass(frozen=True)
class RuntimeArgs:
    """Threads (None: leave torch's setting), device, output format and this process's place in the run."""

    threads: int | None = None
    device: str = "cpu"
    json: bool = False
    context: Context = SINGLE

    def start(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)


def typed(args: argparse.Namespace) -> tuple[ModelArgs, DataArgs, RuntimeArgs]:
    """The model, data and runtime options of a command (defaults for the flags it does not have)."""
    return options_from(ModelArgs, args), options_from(DataArgs, args), options_from(RuntimeArgs, args)


@dataclass(frozen=True)
class ReductionArgs:
    """``mambatr.apply``'s arguments: the method (None: dense), its amount, layers or schedule, options."""

    method: str | None = None
    flops_reduction: float | None = None
    ratio: float | None = None
    layers: list[int] | None = None
    schedule: str | None = None
    options: dict[str, object] = field(default_factory=dict)
    recipe: str | None = None

    def apply(self, model: torch.nn.Module) -> ReductionReport:
        """Patch ``model``; the errors of ``mambatr.apply`` name the flags."""
        with flag_names(("flops_reduction", "ratio")):
            return apply(
                model,
                self.method,
                flops_reduction=self.flops_reduction,
                ratio=self.ratio,
                layers=self.layers,
                schedule=self.schedule,
                recipe=self.recipe,
                **self.options,
            )


def reduction_from(args: argparse.Namespace) -> ReductionArgs:
    """The reduction flags, checked before any work: none of them without --method, --layers as block
    indices, --option and the option flags typed and checked by the method's options spec."""
    given = [name for name in (*REDUCTION_FLAGS, *METHOD_OPTIONS) if getattr(args, name, None) is not None]
    method = getattr(args, "method", None)
    if getattr(args, "recipe", None) is not None:
        return recipe_reduction(args.recipe, method, given, args.model)
    if method is None:
        if given:
            flags = " / ".join(map(flag, given))
            raise ValueError(f"{flags} need{'s' if len(given) == 1 else ''} --method")
        return ReductionArgs()
    spec = METHODS[method]
    options = {}
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        options[key] = spec.parse_option(key, value)
    for key in METHOD_OPTIONS:
        if getattr(args, key, None) is not None:
            options[key] = spec.parse_option(key, getattr(args, key))
    schedule = getattr(args, "schedule", None)
    if schedule is None:
        spec(**options)  # an unknown option or value fails here, before any work
    else:
        check_schedule(schedule, method, args.model, given)
    return ReductionArgs(
        method=method,
        flops_reduction=args.flops_reduction,
        ratio=getattr(args, "ratio", None),
        layers=parse_layers(getattr(args, "layers", None)),
        schedule=schedule,
        options=options,
    )


def recipe_reduction(path: str, method: str | None, given: list[str], model: str) -> ReductionArgs:
    """--recipe: the method and schedule ``mambatr tune`` chose, for --model; no other reduction flag."""
    if given:
        raise ValueError(f"--recipe fixes the method, options and schedule; do not give {flag(given[0])}")
    recipe = Recipe.load(path)
    if method not in (None, recipe.method):
        raise ValueError(f"--recipe {path}: this recipe chose {recipe.method}, not --method {method}")
    if recipe.model != model:
        raise ValueError(
            f"--recipe {path}: this recipe was tuned for {recipe.model}, not for --model {model}: "
            f"run `mambatr tune --model {model}`"
        )
    return ReductionArgs(method=recipe.method, recipe=path)


def check_schedule(path: str, method: str, model: str, given: list[str]) -> None:
    """--schedule read and checked before any work: alone (it fixes the layers, counts and options),
    every field valid, made for --method and --model."""
    extra = [flag(name) for name in given if name != "schedule"]
    if extra:
        raise ValueError(
            f"--schedule fixes the layers, counts and options; do not also give {' / '.join(extra)}"
        )
    schedule = Schedule.load(path)
    if schedule.method != method:
        raise ValueError(f"--schedule {path}: this schedule is for {schedule.method}, not --method {method}")
    if schedule.model != model:
        raise ValueError(
            f"--schedule {path}: this schedule was made for {schedule.model}, not for --model {model}: "
            f"a schedule is tuned to one model's weights; calibrate one for {model} (mambatr calibrate)"
        )


def refuse_duplicates(values: Sequence[object] | None, flag_name: str) -> None:
    """A list flag naming an entry twice is refused: it would run (and be counted) twice."""
    seen: list[object] = []
    for value in values or ():
        if value in seen:
            raise ValueError(f"{flag_name}: {value} is given twice")
        seen.append(value)


def parse_layers(text: str | None) -> list[int] | None:
    """--layers as block indices; None when not given."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers expects comma-separated block indices, got {text!r}") from None
