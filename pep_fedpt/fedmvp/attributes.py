"""Class attribute phrases (one JSON file per data set) and the sentences built from them.

A file ``<attributes-dir>/<dataset>.json`` is one JSON object: class name -> list of short
phrases ("spotted fur", "long, curved trunk", ...). Class names are matched after
normalisation (case folded, underscores as spaces, runs of white space as one space), so
the folder name ``The_Eiffel_Tower`` finds the key "The Eiffel Tower" and ``Alarm_Clock``
finds "alarm clock"; hyphens and digits stay as they are ("737-200", "Type-S").

Sentence template (the design's): ``[prefix ]a photo of a {class}, [suffix, ]{connector}
{phrase}``, where the connector is chosen by the phrase's first words:

- "which is" before an article ("a", "an": "which is a large bird") and before a
  participle followed by a preposition ("used for", "associated with", "positioned near");
- "which" before a verb or an adverb that leads a verb phrase ("has", "often", "typically",
  "can", "provides", ...: "which often shows stripes");
- "which has" otherwise: the phrase is a noun phrase ("which has spotted fur").

This is the word-level form of the rule of the attribute-description literature (Menon &
Vondrick) that the authors' code builds on, whose check ``startswith('a')`` also fires on
any phrase starting with the letter a ("which is antlers"); here the first *word* decides.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

PLAIN_TEMPLATE = "a photo of a {}."

_ARTICLES = frozenset({"a", "an"})
_VERB_LEADS = frozenset(
    {
        "has",
        "have",
        "is",
        "are",
        "often",
        "typically",
        "usually",
        "sometimes",
        "generally",
        "commonly",
        "also",
        "may",
        "can",
        "provides",
        "features",
        "includes",
        "contains",
        "shows",
        "varies",
        "resembles",
        "looks",
    }
)
_PREPOSITIONS = frozenset(
    {
        "with",
        "by",
        "for",
        "in",
        "on",
        "to",
        "at",
        "from",
        "near",
        "into",
        "as",
        "along",
        "around",
        "under",
        "over",
        "inside",
        "between",
        "within",
        "like",
        "against",
        "across",
        "onto",
    }
)


class AttributesError(ValueError):
    """Attribute phrases missing or malformed; the message names the class and the file."""


def normalise_class_name(name: str) -> str:
    """The form under which a class name is looked up in an attribute file."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().casefold()


def display_class_name(name: str) -> str:
    """The class as it is written into a sentence: underscores become spaces."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


def connector(phrase: str) -> str:
    """'which is', 'which' or 'which has', by the phrase's first words (module docstring)."""
    words = [w.strip(",.;:!?()\"'").casefold() for w in phrase.split()]
    first = words[0] if words else ""
    second = words[1] if len(words) > 1 else ""
    if first in _ARTICLES or first == "used":
        return "which is"
    if first.endswith("ed") and second in _PREPOSITIONS:
        return "which is"
    if first in _VERB_LEADS:
        return "which"
    return "which has"


def sentences(
    classname: str,
    phrases: list[str],
    prefix: str = "",
    suffix: str = "",
    lead: str = "a photo of a",
) -> list[str]:
    """One sentence per phrase, ``[prefix ]{lead} {class}, [suffix, ]{connector} {phrase}``;
    no phrases: the plain sentence ``[prefix ]{lead} {class}[, suffix].``

    ``lead`` frames the class ("a photo of a", the released UCF101's "a photo of a person
    doing"); ``prefix`` (data set / domain words) opens every sentence, ``suffix`` follows
    the class; all are stripped and joined with a space / ", ".
    """
    name = display_class_name(classname)
    head = f"{prefix.strip()} {lead.strip()}".strip()
    tail = suffix.strip().rstrip(",").strip()
    if not phrases:
        middle = f", {tail}" if tail else ""
        return [f"{head} {name}{middle}."]
    tail = f"{tail}, " if tail else ""
    out = []
    for phrase in phrases:
        text = phrase.strip()
        out.append(f"{head} {name}, {tail}{connector(text)} {text}")
    return out


def attribute_file(attributes_dir: str | Path, dataset: str) -> Path:
    return Path(attributes_dir) / f"{dataset}.json"


def load_attributes(
    attributes_dir: str | Path, dataset: str, classnames: list[str], plain_template: bool
) -> dict[str, list[str]]:
    """Phrases of each of ``classnames`` (keys in that order) from ``<dir>/<dataset>.json``.

    A class without phrases, or no file at all, is an ``AttributesError`` naming the class
    and the file, unless ``plain_template``: then that class gets ``[]`` (the plain sentence).
    """
    if not str(attributes_dir):
        if plain_template:
            return {name: [] for name in classnames}
        raise AttributesError(
            f"fedmvp.attributes-dir is empty: no attribute phrases for data set {dataset!r}; "
            f"point it at a folder with {dataset}.json (class name -> phrases), or set "
            "fedmvp.plain-template = true to use 'a photo of a {class}.'"
        )
    path = attribute_file(attributes_dir, dataset)
    if not path.is_file():
        if plain_template:
            return {name: [] for name in classnames}
        raise AttributesError(
            f"no attribute file {path} for data set {dataset!r} (expected a JSON object "
            "class name -> list of phrases); add it, or set fedmvp.plain-template = true"
        )
    table = _read(path)
    out: dict[str, list[str]] = {}
    for name in classnames:
        phrases = table.get(normalise_class_name(name))
        if phrases:
            out[name] = phrases
        elif plain_template:
            out[name] = []
        else:
            close = difflib.get_close_matches(normalise_class_name(name), list(table), n=3)
            hint = f"; close keys in the file: {close}" if close else ""
            raise AttributesError(
                f"class {name!r} has no attribute phrases in {path}{hint}; add them, or set "
                "fedmvp.plain-template = true to use 'a photo of a {class}.' for it"
            )
    return out


def _read(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttributesError(f"attribute file {path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AttributesError(
            f"attribute file {path} holds a {type(raw).__name__}; expected a JSON object "
            "class name -> list of phrases"
        )
    table: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for key, phrases in raw.items():
        if not isinstance(phrases, list) or not all(
            isinstance(p, str) and p.strip() for p in phrases
        ):
            raise AttributesError(
                f"class {key!r} in {path}: expected a list of non-empty strings, got {phrases!r}"
            )
        norm = normalise_class_name(key)
        if norm in table:
            raise AttributesError(
                f"classes {origin[norm]!r} and {key!r} in {path} are the same name after "
                "normalisation (case, underscores, spaces); keep one"
            )
        table[norm], origin[norm] = [p.strip() for p in phrases], key
    return table
