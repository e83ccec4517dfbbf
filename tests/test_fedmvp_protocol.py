"""The base->new protocol (pep_fedpt/data/base_new.py) against hand-counted splits."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pep_fedpt.config import ConfigError
from pep_fedpt.data.base_new import (
    assign_classes,
    base_new_split,
    draw_shots,
    harmonic_mean,
    of_classes,
    split_base_new,
)


def test_base_is_the_first_half_of_the_labels_rounded_up() -> None:
    assert split_base_new(10) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert split_base_new(5) == ((0, 1, 2), (3, 4))
    with pytest.raises(ConfigError, match="at least 2 classes, not 1"):
        split_base_new(1)


def test_clients_get_disjoint_base_classes() -> None:
    base = tuple(range(50))
    classes = assign_classes(base, num_clients=2, classes_per_client=20, seed=3)
    assert [len(c) for c in classes] == [20, 20]
    assert not set(classes[0]) & set(classes[1])
    assert set(classes[0]) | set(classes[1]) <= set(base)
    assert classes == assign_classes(base, 2, 20, seed=3)  # seeded
    assert classes != assign_classes(base, 2, 20, seed=4)


def test_fewer_classes_per_client_when_the_base_is_short_said_in_a_log_line(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pep_fedpt.data.base_new"):
        classes = assign_classes((0, 1, 2, 3, 4), num_clients=2, classes_per_client=20, seed=0)
    assert [len(c) for c in classes] == [2, 2]  # 5 // 2; one base class held by nobody
    assert "give each client only 2 disjoint classes" in caplog.text


def test_too_many_clients_for_the_base_classes_is_an_error() -> None:
    with pytest.raises(ConfigError, match="5 base classes cannot give each of 6 clients"):
        assign_classes((0, 1, 2, 3, 4), num_clients=6, classes_per_client=1, seed=0)


def test_shots_per_class_are_drawn_with_the_seed() -> None:
    targets = np.array([0] * 10 + [1] * 3 + [2] * 10)
    pool = np.arange(len(targets))
    drawn = draw_shots(pool, targets, (0, 1), shots=4, seed=7)
    labels = targets[drawn]
    assert (labels == 0).sum() == 4
    assert (labels == 1).sum() == 3  # only 3 exist: all of them
    assert np.array_equal(drawn, draw_shots(pool, targets, (0, 1), 4, seed=7))
    assert not np.array_equal(drawn, draw_shots(pool, targets, (0, 1), 4, seed=8))
    # a class's draw does not depend on the other classes asked for
    np.testing.assert_array_equal(draw_shots(pool, targets, (0,), 4, seed=7), drawn[labels == 0])
    with pytest.raises(ConfigError, match=r"fedmvp\.shots = 0"):
        draw_shots(pool, targets, (0,), 0, seed=7)


def test_the_whole_split_by_hand() -> None:
    # 6 classes: base 0-2, new 3-5. Train pool: 5 of each class; test: 2 of each.
    train_targets = np.repeat(np.arange(6), 5)
    test_targets = np.repeat(np.arange(6), 2)
    split = base_new_split(
        np.arange(30),
        train_targets,
        np.arange(12),
        test_targets,
        num_classes=6,
        num_partitions=3,
        classes_per_client=1,
        shots=2,
        seed=0,
    )
    assert split.base == (0, 1, 2) and split.new == (3, 4, 5)
    assert sorted(c for own in split.client_classes for c in own) == [0, 1, 2]
    for own, train, test in zip(
        split.client_classes, split.client_train, split.client_test, strict=True
    ):
        assert len(train) == 2 and set(train_targets[train]) == set(own)
        assert set(test_targets[test]) == set(own) and len(test) == 2
    np.testing.assert_array_equal(split.base_test, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(split.new_test, [6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(of_classes(np.arange(12), test_targets, (5,)), [10, 11])


def test_a_client_whose_classes_have_no_example_is_an_error() -> None:
    train_targets = np.array([0, 0, 2, 2])  # class 1 has no training example
    with pytest.raises(ConfigError, match=r"partition \d's classes \[1\] have no training"):
        base_new_split(np.arange(4), train_targets, np.arange(2), np.array([0, 1]), 4, 2, 1, 1, 0)


def test_hm_by_hand() -> None:
    # 3 / (1/0.5 + 1/0.6 + 1/0.75) = 3 / (2 + 5/3 + 4/3) = 3 / 5
    assert harmonic_mean(0.5, 0.6, 0.75) == pytest.approx(0.6)
    assert harmonic_mean(0.8, 0.8, 0.8) == pytest.approx(0.8)
    assert harmonic_mean(0.9, 0.0, 0.7) == 0.0
    with pytest.raises(ValueError, match=r"new accuracy = 1\.5"):
        harmonic_mean(0.5, 0.5, 1.5)


def test_the_round_row_has_local_base_new_and_hm_by_hand() -> None:
    from server_app.base_new import base_new_metrics

    row = {
        "server/base-accuracy": 0.6,
        "server/new-accuracy": 0.75,
        "evaluate/mean-client-accuracy": 0.5,
        "evaluate/global-accuracy": 0.9,
    }
    derived = base_new_metrics(row)
    assert derived["server/local-accuracy"] == 0.5
    assert derived["server/hm"] == pytest.approx(0.6)  # 3 / (2 + 5/3 + 4/3)
    # round 0: no client evaluated yet, so no Local and no HM; other methods: nothing
    del row["evaluate/mean-client-accuracy"]
    assert base_new_metrics(row) == {}
    assert base_new_metrics({"server/accuracy": 0.5, "evaluate/mean-client-accuracy": 0.4}) == {}


def test_leave_one_domain_out_by_hand() -> None:
    from pep_fedpt.data.leave_one_domain_out import leave_one_domain_out, target_index

    # 3 domains x 2 classes x 4 examples; test: indices 0..11, domain = index // 4
    domains = np.repeat([0, 1, 2], 8)
    targets = np.tile(np.repeat([0, 1], 4), 3)
    test_domains = np.repeat([0, 1, 2], 4)
    assert target_index(("photo", "sketch", "cartoon"), "sketch") == 1
    with pytest.raises(ConfigError, match=r"target-domain = 'art' is not one of"):
        target_index(("photo", "sketch"), "art")
    split = leave_one_domain_out(
        np.arange(24), domains, targets, np.arange(12), test_domains,
        num_domains=3, target=1, num_partitions=4, num_classes=2, shots=1, seed=0,
    )  # fmt: skip
    assert split.client_domains == (0, 0, 2, 2)  # two clients per source domain
    for d, train, test in zip(
        split.client_domains, split.client_train, split.client_test, strict=True
    ):
        assert set(domains[train]) == {d} and sorted(targets[train]) == [0, 1]  # 1 shot each
        assert set(test_domains[test]) == {d}
    assert not set(split.client_train[0]) & set(split.client_train[1])  # disjoint shares
    np.testing.assert_array_equal(split.target_test, [4, 5, 6, 7])
    with pytest.raises(ConfigError, match="not a multiple of the 2 source domains"):
        leave_one_domain_out(
            np.arange(24), domains, targets, np.arange(12), test_domains, 3, 1, 3, 2, 1, 0
        )
