"""Comma-separated lists on bench command lines (``--nodes 100,1000``, ``--methods a,b``).

One reading for every bench command: items are stripped and empty ones dropped
(``"0, 1,"`` is ``0`` and ``1``), each item may appear once, and a bad item is refused
with a message naming it and what is accepted. ``comma_ints`` and ``comma_choices`` build
argparse ``type=`` callables (argparse prints their message after the option's name);
``parse_ints`` and ``parse_choices`` raise ``BadList`` for callers that report errors
their own way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection


class BadList(ValueError):
    """A comma-separated list with a bad item; the message names it and what is accepted."""


def comma_items(text: str) -> list[str]:
    """The stripped, non-empty items of ``text``: ``"a, b,"`` -> ``["a", "b"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _once(items: list[str], label: str, accepted: str) -> None:
    """Refuse an empty list and an item given twice."""
    if not items:
        raise BadList(f"{label}: empty list; accepted: {accepted}")
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise BadList(f"{label} names {item!r} twice; accepted: {accepted}")
        seen.add(item)


def parse_ints(
    text: str, option: str = "", *, minimum: int | None = None, example: str = "1,2"
) -> list[int]:
    """``"100, 1000"`` -> ``[100, 1000]``: distinct integers, each ``>= minimum`` when
    given, in the order written. ``option`` prefixes the message (``--nodes '1,x': ...``)."""
    label = f"{option} {text!r}".lstrip()
    floor = "" if minimum is None else f" >= {minimum}"
    accepted = f"integers{floor} separated by commas, each once, e.g. {example}"
    items = comma_items(text)
    values = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise BadList(f"{label}: {item!r} is not an integer; accepted: {accepted}") from None
        if minimum is not None and value < minimum:
            raise BadList(f"{label}: {value} is below {minimum}; accepted: {accepted}")
        values.append(value)
    _once([str(v) for v in values], label, accepted)
    return values


def parse_choices(text: str, accepted: Collection[str], option: str = "") -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``: distinct items, each one of ``accepted``."""
    label = f"{option} {text!r}".lstrip()
    items = comma_items(text)
    unknown = [item for item in items if item not in accepted]
    if unknown or not items:
        raise BadList(
            f"{label}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
            f"accepted: {', '.join(accepted)}"
        )
    _once(items, label, f"each of {', '.join(accepted)} once")
    return items


def comma_ints(*, minimum: int | None = None, example: str = "1,2") -> Callable[[str], list[int]]:
    """An argparse ``type=`` for ``parse_ints``: a bad list is an argparse error."""

    def parse(text: str) -> list[int]:
        try:
            return parse_ints(text, minimum=minimum, example=example)
        except BadList as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def comma_choices(accepted: Collection[str]) -> Callable[[str], list[str]]:
    """An argparse ``type=`` for ``parse_choices``: a bad list is an argparse error."""

    def parse(text: str) -> list[str]:
        try:
            return parse_choices(text, accepted)
        except BadList as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def comma_strings(text: str) -> list[str]:
    """An argparse ``type=`` for a list of free names, each once (``--weights a,b``)."""
    items = comma_items(text)
    try:
        _once(items, repr(text), "names separated by commas, each once")
    except BadList as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return items
