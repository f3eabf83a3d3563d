"""What every reduction method provides, so the solver, the API and the CLI treat them alike."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from mambatr.models.backbone import BackboneConfig, BlockInternals
from mambatr.tokens import TokenState


class ReductionMethod(ABC):
    """A training-free method: given a block's internals, remove exactly ``count`` tokens.

    ``amount`` is the method's own knob (MTR: the ratio r of the current token count) and
    ``removal(amount, tokens)`` turns it into a count; the FLOPs solver searches over it. ``reduce``
    checks the count against ``max_removal`` and runs the method's own ``step``.
    """

    name: ClassVar[str]
    max_amount: ClassVar[float] = 0.5
    # option -> its default and either the allowed values (a tuple) or the required type
    options: ClassVar[dict[str, tuple[object, tuple[object, ...] | type]]] = {}
    # the options `mambatr tune` searches, each with the values it tries (measured to matter)
    searchable: ClassVar[dict[str, tuple[object, ...]]] = {}

    def __init__(self, **options: object) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"{self.name}: unknown options {sorted(unknown)}; known: {sorted(self.options)}")
        for key, (default, allowed) in self.options.items():
            value = options.get(key, default)
            if isinstance(allowed, tuple) and value not in allowed:
                raise ValueError(f"{self.name}: {key}={value!r} is not one of {list(allowed)}")
            if isinstance(allowed, type) and not isinstance(value, allowed):
                raise ValueError(f"{self.name}: {key} must be {allowed.__name__}, got {value!r}")
            setattr(self, key, value)

    @classmethod
    def parse_option(cls, key: str, text: str) -> object:
        """An option's value from command-line text, typed by the option spec (bool, int, float, choice)."""
        if key not in cls.options:
            raise ValueError(f"{cls.name}: unknown option {key!r}; known: {sorted(cls.options)}")
        default, allowed = cls.options[key]
        if allowed is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{cls.name}: {key} expects true or false, got {text!r}")
            return text.lower() in ("true", "1", "yes")
        if allowed in (int, float):
            try:
                return allowed(text)
            except ValueError:
                raise ValueError(f"{cls.name}: {key} expects {allowed.__name__}, got {text!r}") from None
        return text

    def describe(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.options}

    def removal(self, amount: float, tokens: int, has_cls: bool) -> int:
        """Tokens removed at a layer holding ``tokens`` tokens: by default the share ``amount`` of the
        reducible ones (the class token never counts)."""
        return math.floor(amount * (tokens - int(has_cls)))

    @abstractmethod
    def max_removal(self, tokens: int, has_cls: bool) -> int:
        """The most tokens this method can remove at one layer (it never removes the class token)."""

    @abstractmethod
    def overhead(self, config: BackboneConfig, tokens: int, count: int) -> int:
        """MACs the method itself spends at one layer (importance, similarity, sorting, merging)."""

    def scores(self, state: TokenState, internals: BlockInternals) -> torch.Tensor | None:
        """(B, L) the importance the method ranks tokens by (for plots); None if it uses none."""
        return None

    def preferred_layers(self, depth: int) -> list[int] | None:
        """The method's own default reduction layers; None: the library default for the depth."""
        return None

    @property
    def aligns_scan(self) -> bool:
        """True: later blocks' scans bridge removed tokens (HSA's alignment, gap counts from the backbone)."""
        return False

    def reduce(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        """The state after removing exactly ``count`` tokens (survivors in original order)."""
        limit = self.max_removal(state.length, state.cls_position is not None)
        if count > limit:
            raise ValueError(f"{self.name}: cannot remove {count} of {state.length} tokens (at most {limit})")
        if count == 0:
            return state
        return self.step(state, internals, count)

    @abstractmethod
    def step(self, state: TokenState, internals: BlockInternals, count: int) -> TokenState:
        """The method's own reduction: remove exactly ``count`` tokens, 0 < count <= ``max_removal``."""
