"""The base->new protocol (pep_fedpt/data/base_new.py) against hand-counted splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.data.base_new import (
    base_new_split,
    class_chunks,
    draw_shots,
    harmonic_mean,
    of_classes,
    published_clients,
    split_base_new,
)


def test_base_is_the_first_half_of_the_labels_rounded_up() -> None:
    assert split_base_new(10) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert split_base_new(5) == ((0, 1, 2), (3, 4))
    with pytest.raises(ConfigError, match="at least 2 classes, not 1"):
        split_base_new(1)


# The nine base->new sets of the paper: base classes (ceil(C/2)) and the released code's
# chunks of 20 (numpy's round of m / 20, halves to even; the last client the remainder).
PUBLISHED = {
    "caltech101": (50, [20, 30]),
    "oxford_flowers": (51, [20, 20, 11]),
    "fgvc_aircraft": (50, [20, 30]),
    "ucf101": (51, [20, 20, 11]),
    "oxford_pets": (19, [19]),
    "food101": (51, [20, 20, 11]),
    "dtd": (24, [24]),
    "stanford_cars": (98, [20, 20, 20, 20, 18]),
    "sun397": (199, [20] * 9 + [19]),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_base_classes_go_to_the_released_consecutive_chunks(name: str) -> None:
    base, sizes = PUBLISHED[name]
    clients = published_clients(base, 20)
    assert clients == len(sizes)
    chunks = class_chunks(range(base), clients, 20)
    assert [len(c) for c in chunks] == sizes
    assert [c for chunk in chunks for c in chunk] == list(range(base))  # every base class


def test_the_nine_sets_give_the_papers_thirty_clients() -> None:
    assert sum(published_clients(base, 20) for base, _ in PUBLISHED.values()) == 30


def test_another_client_count_is_said_in_a_log_line_and_too_many_refused(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pep_fedpt.data.base_new"):
        chunks = class_chunks((0, 1, 2, 3, 4), num_clients=3, classes_per_client=1)
    assert chunks == [(0,), (1,), (2, 3, 4)]  # the last client the remainder
    assert "the released code uses 5 clients, this run 3" in caplog.text
    with pytest.raises(ConfigError, match=r"5 classes .* leave no class for the last of 4"):
        class_chunks((0, 1, 2, 3, 4), num_clients=4, classes_per_client=2)
    assert class_chunks((0, 1, 2, 3, 4), 2, 2) == [(0, 1), (2, 3, 4)]  # the offline run's


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
    test_targets = np.tile(np.repeat([0, 1], 2), 3)
    split = leave_one_domain_out(
        np.arange(24), domains, targets, np.arange(12), test_domains,
        num_domains=3, target=1, num_partitions=4, num_classes=2, classes_per_client=1,
        shots=1, seed=0, test_targets=test_targets,
    )  # fmt: skip
    assert split.client_domains == (0, 0, 2, 2)  # two clients per source domain
    assert split.client_classes == ((0,), (1,), (0,), (1,))  # a chunk of classes each
    for d, own, train, test in zip(
        split.client_domains,
        split.client_classes,
        split.client_train,
        split.client_test,
        strict=True,
    ):
        assert set(domains[train]) == {d} and targets[train].tolist() == list(own)  # 1 shot
        assert set(test_domains[test]) == {d} and set(test_targets[test]) == set(own)
        assert len(test) == 2  # its domain's test examples of its own class
    np.testing.assert_array_equal(split.target_test, [4, 5, 6, 7])
    with pytest.raises(ConfigError, match="not a multiple of the 2 source domains"):
        leave_one_domain_out(
            np.arange(24), domains, targets, np.arange(12), test_domains, 3, 1, 3, 2, 1, 1, 0
        )


def test_officehome_and_domainnet_sources_split_into_the_released_chunks() -> None:
    from pep_fedpt.data.leave_one_domain_out import leave_one_domain_out

    for classes, per_domain, sizes in ((65, 3, [20, 20, 25]), (345, 17, [20] * 16 + [25])):
        assert published_clients(classes, 20) == per_domain
        targets = np.tile(np.arange(classes), 2)  # 2 domains, one example per class
        domains = np.repeat([0, 1], classes)
        split = leave_one_domain_out(
            np.arange(2 * classes), domains, targets, np.arange(0), np.zeros(0, np.int64),
            num_domains=2, target=1, num_partitions=per_domain, num_classes=classes,
            classes_per_client=20, shots=8, seed=0,
        )  # fmt: skip
        assert [len(c) for c in split.client_classes] == sizes
        assert [len(t) for t in split.client_train] == sizes  # the one example of each class


def test_the_target_is_its_central_test_part_or_the_whole_domain(tmp_path: Path) -> None:
    """fedmvp.target-split through the FedMVP server on a fake PACS (sketch held out):
    "test" scores the sketch examples of the central test carve, "all" every sketch image."""
    import torch
    from helpers.data import fake_domain_tree

    from pep_fedpt.data.domainbed import DOMAIN_SETS
    from pep_fedpt.methods.fedmvp import FedMVPServer
    from pep_fedpt.methods.registry import get_method

    classes = ("dog", "elephant", "guitar")
    fake_domain_tree(tmp_path / "pacs", DOMAIN_SETS["pacs"].domains, classes)  # 6 per domain
    (tmp_path / "attrs").mkdir()
    (tmp_path / "attrs" / "pacs.json").write_text(json.dumps({c: ["a shape"] for c in classes}))
    flat = RunConfig().to_flat()
    flat.update(
        {
            "method": "fedmvp",
            "cache-dir": str(tmp_path / "cache"),
            "data.dataset": "pacs",
            "data.data-dir": str(tmp_path / "pacs"),
            "data.central-test-fraction": 0.5,
            "fedmvp.protocol": "domain",
            "fedmvp.target-domain": "sketch",
            "fedmvp.attributes-dir": str(tmp_path / "attrs"),
        }
    )
    sizes = {}
    for split in ("test", "all"):
        flat["fedmvp.target-split"] = split
        server = FedMVPServer(get_method("fedmvp"), RunConfig.from_flat(flat), torch.device("cpu"))
        target = server.sets["target"]
        assert set(np.asarray(target.dataset.domains)[target.indices]) == {3}  # sketch only
        sizes[split] = len(target)
    assert sizes["all"] == 6 and 0 < sizes["test"] < 6
    with pytest.raises(ConfigError, match=r"target-split = 'everything' is not accepted"):
        RunConfig.from_flat({**flat, "fedmvp.target-split": "everything"})
