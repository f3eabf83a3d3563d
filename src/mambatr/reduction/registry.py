"""Reduction methods by name: adding a method is one file plus one line here."""

from __future__ import annotations

from mambatr.reduction.base import ReductionMethod
from mambatr.reduction.evit import EViT
from mambatr.reduction.hsa import HSA
from mambatr.reduction.mtr import MTR
from mambatr.reduction.pumer import PuMer
from mambatr.reduction.stm import STM
from mambatr.reduction.tome import ToMe
from mambatr.reduction.utr import UTR

METHODS: dict[str, type[ReductionMethod]] = {
    "mtr": MTR,
    "hsa": HSA,
    "stm": STM,
    "utr": UTR,
    "evit": EViT,
    "pumer": PuMer,
    "tome": ToMe,
}


def build_method(name: str, **options: object) -> ReductionMethod:
    if name not in METHODS:
        raise ValueError(f"unknown reduction method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)
