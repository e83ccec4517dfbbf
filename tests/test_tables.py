"""bench/tables.py: the benchmark tables of the pages, rewritten between their markers from
collected results (fake comparison folders, no Flower), checked by --check."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.fake_results import fake_benchmark

from bench import collect, tables

ROOT = Path(__file__).resolve().parents[1]
README = """# project

Text before, kept.

## Benchmark

<!-- bench:main -->
an old table, replaced
<!-- /bench:main -->

Text after, kept.
"""
DOCS = """# benchmarks

<!-- bench:main -->
<!-- /bench:main -->

Between, kept.

<!-- bench:selection -->
<!-- /bench:selection -->

<!-- bench:ablations -->
<!-- /bench:ablations -->
"""


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake benchmark, built and collected once for the module."""
    base = tmp_path_factory.mktemp("benchmark")
    with pytest.MonkeyPatch.context() as monkeypatch:
        out = fake_benchmark(base / "out", monkeypatch)
    collect.collect(out, base / "results")
    return base / "results"


@pytest.fixture
def repo(collected: Path, tmp_path: Path) -> Path:
    """A repository with the two pages and a copy of the collected fake benchmark."""
    root = tmp_path / "repo"
    shutil.copytree(collected, root / "bench" / "results" / "cifar10")
    (root / "docs").mkdir()
    (root / "README.md").write_text(README)
    (root / "docs" / "benchmark.md").write_text(DOCS)
    # the figure blocks' pages and files (bench/figures.py): this repository's own
    for path in (ROOT / tables.FIGURES).glob("*.json*"):
        shutil.copy(path, root / tables.FIGURES / path.name)
    for page, renderers in tables.PAGES.items():
        if not (root / page).exists():
            (root / page).write_text(
                "".join(f"<!-- bench:{n} -->\n<!-- /bench:{n} -->\n" for n in renderers)
            )
    return root


def _outside(text: str) -> list[str]:
    """The page without the content of its blocks."""
    return re.split(r"<!-- bench:\w+ -->.*?<!-- /bench:\w+ -->", text, flags=re.S)


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", page.read_text())


def test_the_tables_are_written_between_the_markers_and_nowhere_else(repo: Path) -> None:
    assert tables.main(["--root", str(repo)]) == 0
    readme = (repo / "README.md").read_text()
    docs = (repo / "docs" / "benchmark.md").read_text()
    assert _outside(readme) == _outside(README) and _outside(docs) == _outside(DOCS)
    assert "an old table" not in readme
    # README: the compact table per α, the method linking to its first seed's run folder
    assert "**α = 0.1** (final round, mean over seeds 0, 1;" in readme
    assert (
        "| [pep-fedpt](bench/results/cifar10/alpha-0.1/runs/pep-fedpt-s0/) "
        "| 0.5500 ± 0.0707 | 0.2500 | - | 0.6500 | 12.0% | 0.05 |"
    ) in readme
    assert "| [local](bench/results/cifar10/alpha-0.5/runs/local-s0/) |" in readme
    assert readme.index("**α = 0.1**") < readme.index("**α = 0.5**")
    assert "| method | runs | global acc |" not in readme  # the full table: docs only
    # docs: the same with links from docs/, the full tables, the selection, the ablations
    assert "| [pep-fedpt](../bench/results/cifar10/alpha-0.1/runs/pep-fedpt-s0/) |" in docs
    assert docs.count("| method | runs | global acc |") == 2
    assert "| local | failed | **0.5000** | train.lr=0.05 |" in docs
    assert (
        "| reference: [pep-fedpt](../bench/results/cifar10/alpha-0.1/runs/pep-fedpt-s0/), "
        "α = 0.1, seed 0 | as in the main table | 0.5000 | 0.2000 | - | 0.6000 | 12.0% | 18.0% |"
    ) in docs
    tau = "[prompt.tau](../bench/results/cifar10/ablation-tau/results.md) (reference: 0.1)"
    assert f"| {tau} | 0.3 | 0.5000 | 0.2000 | - | 0.6000 | 11.0% | 16.5% |" in docs
    assert f"| {tau} | 1.0 |" in docs
    # every link reaches a file of the repository
    for page in (repo / "README.md", repo / "docs" / "benchmark.md"):
        links = _links(page)
        assert links and all((page.parent / link).exists() for link in links), links


def test_rewriting_again_changes_nothing_and_check_agrees(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tables.main(["--root", str(repo)]) == 0
    first = (repo / "README.md").read_text(), (repo / "docs" / "benchmark.md").read_text()
    capsys.readouterr()
    assert tables.main(["--root", str(repo)]) == 0
    assert "every block already matched" in capsys.readouterr().out
    assert ((repo / "README.md").read_text(), (repo / "docs" / "benchmark.md").read_text()) == (
        first
    )
    assert tables.main(["--root", str(repo), "--check"]) == 0


def test_check_names_each_stale_block_and_writes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tables.main(["--root", str(repo), "--check"]) == 1  # never written: all stale
    err = capsys.readouterr().err
    assert "stale: README.md: block 'main'" in err
    assert "stale: docs/benchmark.md: block 'ablations'" in err
    assert (repo / "README.md").read_text() == README
    tables.main(["--root", str(repo)])
    edited = (repo / "README.md").read_text().replace("0.5500 ± 0.0707", "0.9900 ± 0.0707", 1)
    (repo / "README.md").write_text(edited)
    capsys.readouterr()
    assert tables.main(["--root", str(repo), "--check"]) == 1
    err = capsys.readouterr().err
    assert "stale: README.md: block 'main'" in err and "docs/benchmark.md" not in err
    assert (repo / "README.md").read_text() == edited


@pytest.mark.parametrize(
    ("page", "error"),
    [
        ("a\n<!-- bench:main -->\n", r"README\.md:2: block 'main' is never closed"),
        ("<!-- /bench:main -->\n", r"README\.md:1: '<!-- /bench:main -->' closes a block"),
        ("\n\n<!-- bench:mian -->\n", r"README\.md:3: block 'mian' is unknown; .*accepts: main"),
        ("<!-- bench:ablations -->\n", r"README\.md:1: block 'ablations' is known elsewhere"),
        ("<!-- bench: main -->\n", r"README\.md:1: '<!-- bench: main -->' is not a marker"),
        ("<!--bench:main-->\n", r"README\.md:1: .* is not a marker"),
        (
            "<!-- bench:main -->\n<!-- bench:main -->\n",
            r"README\.md:2: block 'main' opens inside block 'main'",
        ),
        (
            "<!-- bench:main -->\n<!-- /bench:main -->\n<!-- bench:main -->\n",
            r"README\.md:3: block 'main' appears twice",
        ),
    ],
)
def test_a_bad_marker_is_an_error_naming_the_file_and_line(page: str, error: str) -> None:
    with pytest.raises(tables.TablesError, match=error):
        tables.find_blocks(Path("README.md"), page.splitlines(keepends=True), ["main"])


def test_a_bad_marker_fails_the_command_and_writes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "README.md").write_text(README + "<!-- bench:selection -->\n")
    assert tables.main(["--root", str(repo)]) == 2
    assert "README.md:12: block 'selection' is known elsewhere" in capsys.readouterr().err
    assert (repo / "README.md").read_text() == README + "<!-- bench:selection -->\n"
    assert (repo / "docs" / "benchmark.md").read_text() == DOCS


def test_without_results_the_command_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "README.md").write_text(README)
    assert tables.main(["--root", str(tmp_path)]) == 2
    assert "no results under" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tables.main(["--root", str(tmp_path), "--check", str(tmp_path / "empty")]) == 2
    assert "bench.collect OUT" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == README


def test_the_pages_of_this_repository_hold_their_blocks() -> None:
    for page, renderers in tables.PAGES.items():
        lines = (ROOT / page).read_text().splitlines(keepends=True)
        found = tables.find_blocks(ROOT / page, lines, list(renderers))
        assert sorted(block.name for block in found) == sorted(renderers), page


def test_no_committed_result_file_is_hidden_by_gitignore() -> None:
    """CI checks a fresh clone: a result file that .gitignore hides is read here but
    missing there (a `runs/` pattern once hid every run folder)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    hidden = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "ls-files",
            "--others",
            "--ignored",
            "--exclude-standard",
            "--",
            "bench/results",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert hidden == []


def test_the_pages_of_this_repository_match_its_committed_results() -> None:
    """Every table and figure of README.md and docs/ is what ``python -m bench.tables``
    writes from bench/results: none was typed or left stale."""
    assert tables.regenerate_pages(ROOT, ROOT / tables.DEFAULT_RESULTS, check=True) == []


def test_a_method_with_fewer_completed_runs_says_so_and_one_with_none_is_failed(
    repo: Path,
) -> None:
    results = repo / "bench" / "results" / "cifar10"
    (results / "alpha-0.5" / "runs" / "local-s1.json").unlink()  # a run that never ended
    for seed in (0, 1):
        (results / "alpha-0.1" / "runs" / f"local-s{seed}.json").unlink()
    assert tables.main(["--root", str(repo)]) == 0
    readme = (repo / "README.md").read_text()
    assert "| [local](bench/results/cifar10/alpha-0.5/runs/local-s0/) (1/2 runs) | 0.5000 |" in (
        readme
    )
    assert (
        "| [local](bench/results/cifar10/alpha-0.1/runs/local-s0/) "
        "| failed | failed | failed | failed | failed | 0.05 |"
    ) in readme


def test_the_reference_value_of_an_ablation_is_the_reference_runs_own(repo: Path) -> None:
    run = repo / "bench" / "results" / "cifar10" / "alpha-0.1" / "runs" / "pep-fedpt-s0"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "prompt.tau": 0.2}))
    assert tables.main(["--root", str(repo)]) == 0
    docs = (repo / "docs" / "benchmark.md").read_text()
    assert "/ablation-tau/results.md) (reference: 0.2) | 0.3 |" in docs


def test_an_ablation_on_more_seeds_gets_a_reference_row_over_the_same_seeds(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.fake_results import FakeRuns

    from bench import compare
    from bench.grid import parse_grid

    results = repo / "bench" / "results" / "cifar10"
    monkeypatch.setattr(compare, "execute", FakeRuns({("pep-fedpt", 0.3): 0.55}, key="prompt.tau"))
    base = {"data.val-fraction": 0.1, "train.lr": 0.05}
    sweep = parse_grid("prompt.tau=0.3", "--sweep")
    compare.compare(["pep-fedpt"], [0, 1], results / "ablation-tau", base, "", sweep=sweep)
    assert tables.main(["--root", str(repo)]) == 0
    rows = [
        line
        for line in (repo / "docs" / "benchmark.md").read_text().splitlines()
        if line.startswith("| reference: ")
    ]
    assert [row.split(" | ")[0].split(", ", 2)[-1] for row in rows] == ["seed 0", "seeds 0, 1"]
    finals = [
        json.loads(
            (results / "alpha-0.1" / "runs" / f"pep-fedpt-s{s}" / "metrics.json").read_text()
        )
        for s in (0, 1)
    ]
    means = [f[-1]["evaluate/mean-client-accuracy"] for f in finals]
    assert f"| {sum(means) / 2:.4f}" in rows[1]


DOCS_05 = DOCS + "\n<!-- bench:ablations-alpha-0.5 -->\n<!-- /bench:ablations-alpha-0.5 -->\n"
ONEHOT_05 = "ablation-alpha-0.5-train-weights"


def _one_hot_at_alpha_05(repo: Path, monkeypatch: pytest.MonkeyPatch, seeds: list[int]) -> None:
    """The one-hot ablation at α = 0.5 as bench/benchmark.sh leaves it (mean client accuracy
    0.5 + seed / 10, as every fake run), collected beside the fake benchmark; and the α = 0.5
    reference run on seed 0 made to end at 0.77, so that its rows can be told apart."""
    from helpers.fake_results import FakeRuns, rounds

    from bench import compare
    from bench.grid import parse_grid

    results = repo / "bench" / "results" / "cifar10"
    out = repo.parent / "out"
    scores = {("pep-fedpt", "onehot"): 0.7}
    monkeypatch.setattr(
        compare, "execute", FakeRuns(scores, key="prompt.train-weights", states=True)
    )
    base = {"data.val-fraction": 0.1, "data.alpha": 0.5, "train.lr": 0.05}
    sweep = parse_grid("prompt.train-weights='onehot'", "--sweep")
    compare.compare(["pep-fedpt"], seeds, out / ONEHOT_05, base, "", sweep=sweep)
    assert [c.name for c in collect.collect(out, results)] == [ONEHOT_05]
    metrics = results / "alpha-0.5" / "runs" / "pep-fedpt-s0" / "metrics.json"
    metrics.write_text(json.dumps(rounds([0.77], 10.0)))
    (repo / "docs" / "benchmark.md").write_text(DOCS_05)


def _block(repo: Path, name: str) -> str:
    docs = (repo / "docs" / "benchmark.md").read_text()
    return docs.split(f"<!-- bench:{name} -->")[1].split(f"<!-- /bench:{name} -->")[0]


def test_the_alpha_05_ablations_are_read_against_pep_fedpts_own_alpha_05_run(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_hot_at_alpha_05(repo, monkeypatch, [0])
    assert tables.main(["--root", str(repo)]) == 0
    block = _block(repo, "ablations-alpha-0.5")
    run = "../bench/results/cifar10/alpha-0.5/runs/pep-fedpt-s0/"
    assert (
        f"| reference: [pep-fedpt]({run}), α = 0.5, seed 0 | as in the main table | 0.7700 |"
        in (block)
    )
    link = f"[prompt.train-weights](../bench/results/cifar10/{ONEHOT_05}/results.md)"
    assert f"| {link} (reference: soft) | onehot | 0.5000 |" in block
    assert "alpha-0.1" not in block and "ablation-tau" not in block
    assert block.count("| reference: ") == 1  # one seed: no same-seeds row
    assert "No ablation" not in block


def test_the_alpha_01_ablations_block_ignores_the_alpha_05_folders(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "docs" / "benchmark.md").write_text(DOCS_05)
    tables.main(["--root", str(repo)])
    before = _block(repo, "ablations")
    _one_hot_at_alpha_05(repo, monkeypatch, [0, 1])
    assert tables.main(["--root", str(repo)]) == 0
    assert _block(repo, "ablations") == before
    assert ONEHOT_05 not in before and "alpha-0.5" not in before


def test_an_alpha_05_ablation_on_more_seeds_gets_the_alpha_05_reference_over_them(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_hot_at_alpha_05(repo, monkeypatch, [0, 1])
    assert tables.main(["--root", str(repo)]) == 0
    rows = [
        line
        for line in _block(repo, "ablations-alpha-0.5").splitlines()
        if line.startswith("| reference: ")
    ]
    assert [row.split(" | ")[0].split(", ", 1)[-1] for row in rows] == [
        "α = 0.5, seed 0",
        "α = 0.5, seeds 0, 1",
    ]
    assert all("/alpha-0.5/runs/pep-fedpt-s0/" in row for row in rows)
    # seed 0 ends at 0.77 (made so), seed 1 at 0.6 as every fake run: their mean
    assert "| as in the main table | 0.6850 ± " in rows[1]


def test_without_an_alpha_05_ablation_its_block_says_none_ran_yet(repo: Path) -> None:
    (repo / "docs" / "benchmark.md").write_text(DOCS_05)
    assert tables.main(["--root", str(repo)]) == 0
    block = _block(repo, "ablations-alpha-0.5")
    assert "No ablation at α = 0.5 in the results yet" in block
    assert (
        "| reference: [pep-fedpt](../bench/results/cifar10/alpha-0.5/runs/pep-fedpt-s0/)" in block
    )
    assert "No ablation in the results." not in _block(repo, "ablations")  # ablation-tau ran
    assert tables.main(["--root", str(repo), "--check"]) == 0


def test_an_ablation_folder_names_its_alpha_or_ran_at_the_first_one() -> None:
    def named(name: str) -> tables.Comparison:
        return tables.Comparison(name, Path(name), [], ["pep-fedpt"], None, [("k", [1])])

    assert tables.ablation_alpha(named("ablation-tau")) == "0.1"
    assert tables.ablation_alpha(named("ablation-alpha-0.5-train-weights")) == "0.5"
    assert tables.ablation_alpha(named("ablation-alpha-1-tau")) == "1"
    found = tables.ablations([named("ablation-tau"), named("ablation-alpha-0.5-x")], "0.5")
    assert [c.name for c in found] == ["ablation-alpha-0.5-x"]


def _add_diagnostic(run: Path, prior: float, uniform: float, held_out: float) -> None:
    """The last round of ``run``'s metrics as a PEP-FedPT run records the CCMP diagnostic."""
    rows = json.loads((run / "metrics.json").read_text())
    rows[-1].update(
        {
            "evaluate/ccmp-prior-mean-client-accuracy": prior,
            "evaluate/ccmp-uniform-mean-client-accuracy": uniform,
            "evaluate/held-out-ccmp-prior-accuracy": held_out,
        }
    )
    (run / "metrics.json").write_text(json.dumps(rows))


def test_the_ccmp_diagnostic_stands_beside_every_pep_fedpt_row(repo: Path) -> None:
    results = repo / "bench" / "results" / "cifar10"
    _add_diagnostic(results / "alpha-0.1" / "runs" / "pep-fedpt-s0", 0.30, 0.10, 0.20)
    _add_diagnostic(results / "alpha-0.1" / "runs" / "pep-fedpt-s1", 0.40, 0.20, 0.30)
    _add_diagnostic(results / "ablation-tau" / "runs" / "pep-fedpt-v0-s0", 0.25, 0.05, 0.15)
    assert tables.main(["--root", str(repo)]) == 0
    readme = (repo / "README.md").read_text()
    alpha01 = readme[readme.index("**α = 0.1**") : readme.index("**α = 0.5**")]
    assert (
        "| method | mean client acc | worst client | held-out | global | CCMP argmax, own prior "
        "| CCMP argmax, uniform | held-out CCMP argmax, own prior | prompt drift (median) |"
    ) in alpha01
    pep = next(line for line in alpha01.splitlines() if line.startswith("| [pep-fedpt]"))
    assert "| 0.3500 | 0.1500 | 0.2500 |" in pep  # the means over seeds 0 and 1
    local = next(line for line in alpha01.splitlines() if line.startswith("| [local]"))
    assert "| 0.6500 | - | - | - | 10.0% |" in local  # no diagnostic for the baselines
    assert "CCMP argmax: PEP-FedPT's zero-training diagnostic" in alpha01
    # alpha = 0.5 recorded none: its table is as before
    alpha05 = readme[readme.index("**α = 0.5**") :]
    assert "CCMP" not in alpha05.split("\n\n")[1]
    docs = (repo / "docs" / "benchmark.md").read_text()
    ablations = docs[docs.index("<!-- bench:ablations -->") :]
    assert "| CCMP argmax, own prior | CCMP argmax, uniform |" in ablations
    reference = next(line for line in ablations.splitlines() if "reference:" in line)
    assert "| 0.3000 | 0.1000 | 0.2000 |" in reference
    row = next(line for line in ablations.splitlines() if "| 0.3 |" in line)
    assert "| 0.2500 | 0.0500 | 0.1500 |" in row
    assert tables.main(["--root", str(repo), "--check"]) == 0


@pytest.fixture(scope="module")
def collected_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fake CIFAR-100 benchmark: the fake benchmark's folders plus alpha-0.1-onehot
    (PEP-FedPT with one-hot training weights, its own two-point grid and seeds 0, 1)."""
    from helpers.fake_results import FakeRuns

    from bench import compare
    from bench.grid import parse_grid

    base = tmp_path_factory.mktemp("cifar100")
    with pytest.MonkeyPatch.context() as monkeypatch:
        out = fake_benchmark(base / "out", monkeypatch)
        scores = {("pep-fedpt", 0.01): 0.7, ("pep-fedpt", 0.05): 0.65}
        monkeypatch.setattr(compare, "execute", FakeRuns(scores, states=True))
        grid = parse_grid("train.lr=0.01,0.05")
        base_cfg = {"data.val-fraction": 0.1, "prompt.train-weights": "onehot"}
        compare.compare(["pep-fedpt"], [0, 1], out / "alpha-0.1-onehot", base_cfg, "", grid)
    collect.collect(out, base / "results")
    return base / "results"


def _with_cifar100_blocks(repo: Path) -> None:
    page = repo / "docs" / "benchmark.md"
    names = ("cifar100-main", "cifar100-selection", "cifar100-ablations")
    page.write_text(
        page.read_text() + "".join(f"\n<!-- bench:{n} -->\n<!-- /bench:{n} -->\n" for n in names)
    )


def test_without_cifar100_results_its_blocks_say_so(repo: Path) -> None:
    _with_cifar100_blocks(repo)
    assert tables.main(["--root", str(repo)]) == 0
    docs = (repo / "docs" / "benchmark.md").read_text()
    block = docs[docs.index("<!-- bench:cifar100-main -->") :]
    assert block.split("<!-- /bench")[0].strip().endswith(tables.NO_CIFAR100.strip())


def test_the_cifar100_blocks_merge_the_one_hot_row_into_its_setting(
    repo: Path, collected_cifar100: Path
) -> None:
    _with_cifar100_blocks(repo)
    shutil.copytree(collected_cifar100, repo / "bench" / "results" / "cifar100")
    cifar10_readme = (repo / "README.md").read_text()
    assert tables.main(["--root", str(repo)]) == 0
    assert (repo / "README.md").read_text() != cifar10_readme  # README's main: CIFAR-10's
    docs = (repo / "docs" / "benchmark.md").read_text()
    start = docs.index("<!-- bench:cifar100-main -->")
    main = docs[start : docs.index("<!-- /bench:cifar100-main -->")]
    alpha01 = main[main.index("**α = 0.1**") : main.index("**α = 0.5**")]
    row = next(line for line in alpha01.splitlines() if "one-hot training weights" in line)
    # seeds 0 and 1 at its chosen point (0.01, the better validation score): test
    # accuracies 0.5 and 0.6 (FakeRuns: 0.5 + seed / 10), its link into its own folder
    assert row.startswith(
        "| [pep-fedpt (one-hot training weights)]"
        "(../bench/results/cifar100/alpha-0.1-onehot/runs/pep-fedpt-s0/) | 0.5500 ± 0.0707 |"
    )
    assert row.endswith("| 0.01 |")  # its own chosen point
    assert "alpha-0.1-onehot" not in main.replace("/alpha-0.1-onehot/", "")  # no table of its own
    assert (
        "**α = 0.5**" in main
        and "one-hot" not in main[main.index("**α = 0.5**") :].split("Every column")[0]
    )
    selection = docs[docs.index("<!-- bench:cifar100-selection -->") :]
    assert "| pep-fedpt (one-hot training weights) | **0.7000** | 0.6500 | train.lr=0.01 |" in (
        selection
    )
    ablations = docs[docs.index("<!-- bench:cifar100-ablations -->") :]
    assert "/cifar100/ablation-tau/results.md)" in ablations.split("<!-- /bench")[0]
    assert tables.main(["--root", str(repo), "--check"]) == 0
