"""The schedule file's schema: every key, its type and its range, checked when a schedule is read.

A schedule is often edited by hand, and Python is lenient where a schedule must not be: ``int(2.7)``
is 2, ``True`` is the integer 1, a negative count would *add* tokens, a missing key or a list in
place of a mapping would surface as a traceback deep inside a run. So a schedule file is checked
field by field before it is used, and each mistake is one line naming the file and the field, e.g.
``S.json: removals['5']: expected a token count (an integer >= 0), got 2.7``. Token counts against
each layer's limits need the method, and are checked by ``Schedule.check_fits``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from mambatr.reduction.registry import METHODS

# The architecture a schedule fits (mambatr.reduction.schedule.architecture_of)
ARCHITECTURE_KEYS = ("depth", "seq_len", "embed_dim", "has_cls")
REQUIRED = (
    "model",
    "architecture",
    "method",
    "options",
    "removals",
    "flops_reduction_target",
    "flops_reduction_achieved",
    "objective",
)
OPTIONAL = ("calibration", "command", "format")
LAYER_KEY = re.compile(r"0|[1-9][0-9]*")  # a block index as JSON writes it: "12", never "012" or " 1"


class ScheduleError(ValueError):
    """A schedule file that is not valid; the message names the file and the field."""


def read_json(path: Path) -> object:
    """The JSON in ``path``; a key given twice in one object is refused (json would keep the last)."""
    try:
        return json.loads(path.read_text(), object_pairs_hook=_without_duplicates)
    except FileNotFoundError:
        raise FileNotFoundError(f"schedule file {path} not found") from None
    except ScheduleError as error:
        raise ScheduleError(f"{path}: {error}") from None
    except (OSError, ValueError) as error:  # a folder, unreadable, not UTF-8, not JSON
        raise ScheduleError(f"{path} is not a schedule JSON file ({error})") from None


def _without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    doubled = sorted({key for key in keys if keys.count(key) > 1})
    if doubled:
        raise ScheduleError(f"key {doubled[0]!r} given twice in one object")
    return dict(pairs)


def checked_fields(data: dict, where: str) -> dict:
    """The schedule's fields from a parsed file (``format`` already checked), each checked; removals
    keyed by int block index. ScheduleError names ``where`` and the first bad field."""

    def fail(field: str, problem: str) -> ScheduleError:
        return ScheduleError(f"{where}: {field}: {problem}")

    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(unknown[0], f"unknown key; a schedule has {', '.join(REQUIRED + OPTIONAL)}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise fail(missing[0], "missing key")
    for key in ("model", "method"):
        _expect(data[key], lambda v: isinstance(v, str) and v != "", "a non-empty string", key, fail)
    if data["method"] not in METHODS:
        raise fail("method", f"unknown method {data['method']!r}; available: {', '.join(sorted(METHODS))}")
    for key in ("architecture", "options", "removals", *(("calibration",) if "calibration" in data else ())):
        _expect(data[key], lambda v: isinstance(v, dict), "a mapping (a JSON object)", key, fail)
    if "command" in data:
        _expect(data["command"], lambda v: isinstance(v, str), "a string", "command", fail)
    for key in ("flops_reduction_target", "flops_reduction_achieved", "objective"):
        _expect(data[key], _is_finite_number, "a finite number", key, fail)
    architecture = _checked_architecture(data["architecture"], fail)
    options = _checked_options(data["method"], data["options"], fail)
    removals = {}
    for layer, count in data["removals"].items():
        field = f"removals[{layer!r}]"
        if not LAYER_KEY.fullmatch(layer):
            raise fail(field, "expected a block index (an integer >= 0) as the key")
        _expect(count, _is_count, "a token count (an integer >= 0)", field, fail)
        removals[int(layer)] = count
    return {**data, "architecture": architecture, "options": options, "removals": removals}


def _checked_architecture(architecture: dict, fail: Callable[[str, str], ScheduleError]) -> dict:
    keys = set(architecture)
    if keys != set(ARCHITECTURE_KEYS):
        wrong = sorted(keys - set(ARCHITECTURE_KEYS)) or sorted(set(ARCHITECTURE_KEYS) - keys)
        problem = "unknown key" if keys - set(ARCHITECTURE_KEYS) else "missing"
        raise fail(f"architecture[{wrong[0]!r}]", f"{problem} key; expected {', '.join(ARCHITECTURE_KEYS)}")
    for key in ("depth", "seq_len", "embed_dim"):
        _expect(architecture[key], _is_positive_int, "a positive integer", f"architecture[{key!r}]", fail)
    _expect(architecture["has_cls"], _is_bool, "true or false", "architecture['has_cls']", fail)
    return {key: architecture[key] for key in ARCHITECTURE_KEYS}


def _checked_options(method: str, options: dict, fail: Callable[[str, str], ScheduleError]) -> dict:
    """The method's options, typed as its option spec says (a bool is not an int here)."""
    spec = METHODS[method].options
    for key, value in options.items():
        field = f"options[{key!r}]"
        if key not in spec:
            raise fail(field, f"{method} has no such option; its options: {', '.join(sorted(spec))}")
        allowed = spec[key][1]
        if isinstance(allowed, tuple):
            if not any(type(value) is type(choice) and value == choice for choice in allowed):
                raise fail(
                    field, f"expected one of {', '.join(map(json.dumps, allowed))}, got {_shown(value)}"
                )
        else:
            test, what = OPTION_TYPES[allowed]
            _expect(value, test, what, field, fail)
    return {key: float(value) if spec[key][1] is float else value for key, value in options.items()}


def _expect(
    value: object,
    test: Callable[[object], bool],
    what: str,
    field: str,
    fail: Callable[[str, str], ScheduleError],
) -> None:
    if not test(value):
        raise fail(field, f"expected {what}, got {_shown(value)}")


def _shown(value: object) -> str:
    """A value as the file spells it, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int in Python, not here


def _is_count(value: object) -> bool:
    return _is_int(value) and value >= 0


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value >= 1


def _is_finite_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# a method option's type (its spec in ReductionMethod.options) -> (test, what the error says)
OPTION_TYPES: dict[type, tuple[Callable[[object], bool], str]] = {
    bool: (_is_bool, "true or false"),
    int: (_is_int, "an integer"),
    float: (_is_finite_number, "a number"),
    str: (lambda value: isinstance(value, str), "a string"),
}
