"""Reduction methods by name: adding a method is one file plus one line here."""

from __future__ import annotations

from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.hsa import HSA
from mambatr.reduction.mtr import MTR
from mambatr.reduction.stm import STM

METHODS: dict[str, type[ReductionMethod]] = {
    "mtr": MTR,
    "hsa": HSA,
    "stm": STM,
}


def build_method(name: str, **options: object) -> ReductionMethod:
    if name not in METHODS:
        raise ValueError(f"unknown reduction method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)
