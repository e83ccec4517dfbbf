"""Which words frame a class in FedMVP's sentences, and in the zero-shot row's.

Two sets, chosen by ``fedmvp.templates``:

- "released" (the default): the table ``conf/templates/released.json``, read as data: the
  released code's lead and suffix per data set ("a photo of a person doing {class}" for
  UCF101, "..., a type of flower, ..." for OxfordFlowers) and per domain of a domain set
  ("a sketch of a", "a clipart of a", ...), the data sets whose PromptFormer keys and values
  are the raw phrases (OfficeHome, TerraIncognita), and the hand-crafted one-sentence
  templates of the zero-shot CLIP row (CoOp's and FedTPG's, "a photo of a {}, a type of
  pet."). A data set or domain the table does not name gets "a photo of a" and no suffix.
- "design": ``fedmvp.prompt-prefix`` before "a photo of a", ``fedmvp.prompt-suffix`` after
  the class (in the domain protocol with ``{domain}`` replaced, default "{domain} style").

A sentence is ``{lead} {class}, [{suffix}, ]{connector} {phrase}``
(``pep_fedpt.fedmvp.attributes.sentences``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pep_fedpt.config import ConfigError, FedMVPConfig

TABLE = Path(__file__).resolve().parents[2] / "conf" / "templates" / "released.json"
PHOTO = "a photo of a"
DOMAIN_SUFFIX = "{domain} style"  # the "design" templates' default in the domain protocol
# Loaders of one data set under another name share its templates.
TEMPLATE_SETS = {"domainnet-10": "domainnet", "cifar10-folder": "cifar10"}


class TemplateError(ValueError):
    """The template table is missing or malformed."""


@dataclass(frozen=True)
class Template:
    """The words around a class: ``{lead} {class}, {suffix}, ...``; ``raw_context``: the
    PromptFormer reads the raw phrases, the logits the sentences (the released code's
    OfficeHome and TerraIncognita)."""

    lead: str = PHOTO
    suffix: str = ""
    raw_context: bool = False

    @classmethod
    def design(cls, cfg: FedMVPConfig, domain: str | None = None) -> Template:
        """The "design" template: prompt-prefix + "a photo of a", prompt-suffix after."""
        lead = f"{cfg.prompt_prefix.strip()} {PHOTO}".strip()
        suffix = cfg.prompt_suffix
        if domain is not None:
            suffix = (suffix or DOMAIN_SUFFIX).replace("{domain}", domain_words(domain))
        return cls(lead=lead, suffix=suffix)


def domain_words(domain: str) -> str:
    return domain.replace("_", " ").strip()


@functools.lru_cache(maxsize=2)
def _table(path: Path = TABLE) -> dict[str, Any]:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TemplateError(f"{path}: the released template table is unreadable ({exc})") from exc
    sentences = table.get("attribute-sentences") if isinstance(table, dict) else None
    if not isinstance(sentences, dict) or not isinstance(table.get("hand-crafted"), dict):
        raise TemplateError(f"{path}: needs 'attribute-sentences' and 'hand-crafted' objects")
    return table


def _entry(raw: Any, where: str) -> tuple[str, str]:
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("lead"), str)
        and raw["lead"].strip()
        and isinstance(raw.get("suffix"), str)
    ):
        raise TemplateError(f"{TABLE}: {where} is {raw!r}; expected {{'lead': ..., 'suffix': ...}}")
    return raw["lead"].strip(), raw["suffix"].strip()


def released_template(dataset: str, domain: str | None = None) -> Template:
    """The released lead and suffix of ``dataset`` (of its ``domain`` in a domain set)."""
    name = TEMPLATE_SETS.get(dataset, dataset)
    sentences = _table()["attribute-sentences"]
    raw_context = name in sentences.get("raw-context", [])
    if domain is None:
        raw = sentences.get("datasets", {}).get(name)
        where = f"attribute-sentences.datasets.{name}"
    else:
        raw = sentences.get("domains", {}).get(name, {}).get(domain)
        where = f"attribute-sentences.domains.{name}.{domain}"
    if raw is None:
        return Template(raw_context=raw_context)
    lead, suffix = _entry(raw, where)
    return Template(lead=lead, suffix=suffix, raw_context=raw_context)


def sentence_template(cfg: FedMVPConfig, dataset: str, domain: str | None = None) -> Template:
    """The template ``fedmvp.templates`` selects for ``dataset`` (and ``domain``)."""
    if cfg.templates == "design":
        return Template.design(cfg, domain)
    if cfg.prompt_prefix or cfg.prompt_suffix:
        raise ConfigError(
            f"fedmvp.prompt-prefix = {cfg.prompt_prefix!r} / prompt-suffix = "
            f"{cfg.prompt_suffix!r} apply to fedmvp.templates = 'design' only; with "
            f"'released' the table {TABLE.name} decides (set templates = 'design' to use them)"
        )
    return released_template(dataset, domain)


def hand_crafted(cfg: FedMVPConfig, dataset: str, classname: str, domain: str | None) -> str:
    """The zero-shot row's one sentence for a class: the data set's hand-crafted template
    (CoOp's and FedTPG's table); in the domain protocol, or for a data set the table does
    not name, the attribute template's framing without a phrase ("a sketch of a dog.")."""
    name = TEMPLATE_SETS.get(dataset, dataset)
    words = classname.replace("_", " ").strip()
    table = _table()["hand-crafted"]
    if domain is None and cfg.templates == "released" and name in table:
        template = table[name]
        if not isinstance(template, str) or template.count("{}") != 1:
            raise TemplateError(f"{TABLE}: hand-crafted.{name} = {template!r} needs one '{{}}'")
        return template.format(words)
    framing = sentence_template(cfg, dataset, domain)
    suffix = framing.suffix.strip().rstrip(",").strip()
    return f"{framing.lead} {words}" + (f", {suffix}" if suffix else "") + "."
