"""bench/comma.py: the one reading of comma-separated lists on bench command lines."""

from __future__ import annotations

import argparse

import pytest

from bench.comma import (
    BadList,
    comma_choices,
    comma_ints,
    comma_items,
    comma_strings,
    parse_choices,
    parse_ints,
)


def test_items_are_stripped_and_empty_ones_dropped() -> None:
    assert comma_items(" a, b,,c ,") == ["a", "b", "c"]
    assert comma_items("") == []


def test_integers_in_the_order_written() -> None:
    assert parse_ints("100, 1000,7") == [100, 1000, 7]
    assert parse_ints("-3,0", minimum=-3) == [-3, 0]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("3,x", "--nodes '3,x': 'x' is not an integer; accepted: integers >= 2 separated"),
        ("1.5", "'1.5' is not an integer"),
        ("4,1", "--nodes '4,1': 1 is below 2; accepted: integers >= 2"),
        ("4,4", "--nodes '4,4' names '4' twice"),
        (" , ", "--nodes ' , ': empty list; accepted"),
    ],
)
def test_a_bad_integer_list_is_refused_naming_the_item(text: str, words: str) -> None:
    with pytest.raises(BadList) as refused:
        parse_ints(text, "--nodes", minimum=2, example="100,1000")
    assert words in str(refused.value)
    assert "e.g. 100,1000" in str(refused.value)


def test_choices_name_the_unknown_ones_and_the_accepted() -> None:
    assert parse_choices("b, a", ("a", "b")) == ["b", "a"]
    with pytest.raises(BadList, match=r"^--x 'a,c,d': unknown 'c', 'd'; accepted: a, b$"):
        parse_choices("a,c,d", ("a", "b"), "--x")
    with pytest.raises(BadList, match="unknown empty list; accepted: a, b"):
        parse_choices("", ("a", "b"))
    with pytest.raises(BadList, match="names 'a' twice"):
        parse_choices("a,a", ("a", "b"))


def test_argparse_types_turn_a_bad_list_into_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="probe")
    parser.add_argument("--nodes", type=comma_ints(minimum=2), default="2,3")
    parser.add_argument("--precisions", type=comma_choices(("fp32", "bf16")), default="fp32")
    parser.add_argument("--weights", type=comma_strings, default="a,b")
    args = parser.parse_args([])
    assert (args.nodes, args.precisions, args.weights) == ([2, 3], ["fp32"], ["a", "b"])
    for argv, words in [
        (["--nodes", "2,y"], "argument --nodes: '2,y': 'y' is not an integer"),
        (["--precisions", "fp8"], "argument --precisions: 'fp8': unknown 'fp8'; accepted"),
        (["--weights", "a,a"], "argument --weights: 'a,a' names 'a' twice"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        assert exited.value.code == 2
        assert words in capsys.readouterr().err
