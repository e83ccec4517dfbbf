"""The words around a class (fedmvp.templates): the released table, read as data, against the
released strings; the "design" key one step away; the zero-shot row's hand-crafted
sentences. Built through the methods' own bank functions on the tiny seeded CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.fedmvp.templates import TABLE, hand_crafted, released_template
from pep_fedpt.methods.fedmvp import cached_clip, text_bank


def _config(tmp_path: Path, dataset: str, **fedmvp: object) -> RunConfig:
    flat = RunConfig().to_flat()
    flat.update({"data.dataset": dataset, "fedmvp.attributes-dir": str(tmp_path / "attrs")})
    flat.update({f"fedmvp.{k.replace('_', '-')}": v for k, v in fedmvp.items()})
    return RunConfig.from_flat(flat)


def _phrases(tmp_path: Path, dataset: str, table: dict[str, list[str]]) -> None:
    (tmp_path / "attrs").mkdir(exist_ok=True)
    (tmp_path / "attrs" / f"{dataset}.json").write_text(json.dumps(table))


def _bank(tmp_path: Path, cfg: RunConfig, classes: list[str], domain: str | None = None):
    return text_bank(cfg, cached_clip(cfg, "cpu"), classes, tmp_path / "cache", domain)


def test_the_released_sentences_of_the_base_to_new_sets(tmp_path: Path) -> None:
    _phrases(tmp_path, "ucf101", {"Apply_Eye_Makeup": ["a brush near the eye"]})
    _phrases(tmp_path, "oxford_flowers", {"pink primrose": ["pale pink petals"]})
    ucf = _bank(tmp_path, _config(tmp_path, "ucf101"), ["Apply_Eye_Makeup"])
    assert ucf.sentences == [
        "a photo of a person doing Apply Eye Makeup, which is a brush near the eye"
    ]
    flowers = _bank(tmp_path, _config(tmp_path, "oxford_flowers"), ["pink primrose"])
    assert flowers.sentences == [
        "a photo of a pink primrose, a type of flower, which has pale pink petals"
    ]
    # The "design" templates are one key away, with their prefix and suffix keys.
    design = _config(tmp_path, "oxford_flowers", templates="design", prompt_suffix="a bloom")
    assert _bank(tmp_path, design, ["pink primrose"]).sentences == [
        "a photo of a pink primrose, a bloom, which has pale pink petals"
    ]
    with pytest.raises(ConfigError, match=r"prompt-suffix = 'a bloom'.*templates = 'design'"):
        _bank(tmp_path, _config(tmp_path, "oxford_flowers", prompt_suffix="a bloom"), ["x"])


def test_the_released_domain_strings(tmp_path: Path) -> None:
    _phrases(tmp_path, "pacs", {"dog": ["a wagging tail"]})
    _phrases(tmp_path, "vlcs", {"car": ["four wheels"]})
    pacs = _bank(tmp_path, _config(tmp_path, "pacs"), ["dog"], "sketch")
    assert pacs.sentences == ["a sketch of a dog, which is a wagging tail"]
    sun = _bank(tmp_path, _config(tmp_path, "vlcs"), ["car"], "SUN09")
    assert sun.sentences == [
        "a photo of a car, in diverse scenic environments, which has four wheels"
    ]
    design = _bank(tmp_path, _config(tmp_path, "pacs", templates="design"), ["dog"], "art_painting")
    assert design.sentences == ["a photo of a dog, art painting style, which is a wagging tail"]
    assert released_template("officehome", "Real World").lead == "a realworld image of a"
    assert released_template("domainnet-10", "quickdraw").lead == "a quickdraw image of a"
    assert released_template("digits") == released_template("caltech101")  # not in the table


def test_officehome_keys_and_values_are_the_raw_phrases(tmp_path: Path) -> None:
    _phrases(tmp_path, "officehome", {"Alarm_Clock": ["round face", "two bells"]})
    cfg = _config(tmp_path, "officehome")
    bank = _bank(tmp_path, cfg, ["Alarm_Clock"], "Clipart")
    assert bank.sentences[0] == "a clipart of a Alarm Clock, which has round face"
    bundle = cached_clip(cfg, "cpu")
    raw = F.normalize(
        bundle.model.encode_text(bundle.tokenizer(["round face", "two bells"])), dim=-1
    )
    assert bank.context is not None and torch.allclose(bank.prompt_context, raw, atol=1e-5)
    assert not torch.allclose(bank.features, raw, atol=1e-3)  # the logits keep the sentences
    pacs = _bank(tmp_path, _config(tmp_path, "officehome", templates="design"), ["Alarm_Clock"])
    assert pacs.context is None


def test_the_hand_crafted_zero_shot_sentences() -> None:
    cfg = RunConfig().fedmvp
    assert hand_crafted(cfg, "oxford_pets", "Abyssinian", None) == (
        "a photo of a Abyssinian, a type of pet."
    )
    assert (
        hand_crafted(cfg, "food101", "apple_pie", None) == "a photo of apple pie, a type of food."
    )
    assert hand_crafted(cfg, "ucf101", "Apply_Eye_Makeup", None) == (
        "a photo of a person doing Apply Eye Makeup."
    )
    assert hand_crafted(cfg, "pacs", "dog", "sketch") == "a sketch of a dog."
    assert hand_crafted(cfg, "digits", "7", None) == "a photo of a 7."


def test_the_zero_shot_row_defaults_to_hand_crafted_and_keeps_the_attribute_row(
    tmp_path: Path,
) -> None:
    """Through the zero-shot server's own banks on digits (base 0-4, new 5-9)."""
    from pep_fedpt.methods.registry import get_method
    from pep_fedpt.methods.zeroshot_clip import ZeroShotServer

    method = get_method("zeroshot-clip")
    flat = RunConfig().to_flat()
    flat.update({"method": "zeroshot-clip", "cache-dir": str(tmp_path / "cache")})
    plain = ZeroShotServer(method, RunConfig.from_flat(flat), torch.device("cpu"))
    assert plain.banks["base"].sentences == [f"a photo of a {d}." for d in range(5)]
    flat["fedmvp.zeroshot-text"] = "attributes"
    described = ZeroShotServer(method, RunConfig.from_flat(flat), torch.device("cpu"))
    assert len(described.banks["new"].sentences) > 5  # the bundled digits phrases
    assert described.banks["new"].sentences[0].startswith("a photo of a 5, which")


def test_the_table_is_shipped_data_with_every_released_string() -> None:
    table = json.loads(TABLE.read_text())
    assert len(table["attribute-sentences"]["datasets"]) == 9
    assert len(table["hand-crafted"]) == 9
    assert TABLE.relative_to(Path(__file__).resolve().parents[1]).as_posix() == (
        "conf/templates/released.json"
    )
