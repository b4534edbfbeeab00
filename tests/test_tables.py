"""`llmdpd tables`: documented tables are what `llmdpd compare` prints from the committed results."""

from __future__ import annotations

import sys
import json
import shutil
from pathlib import Path

import pytest

from llmdpd.cli.main import main as cli_main
from llmdpd.cli.tables import expand

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    """The command line's exit status."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    return exit_.value.code


def test_documented_tables_match_the_committed_results(monkeypatch, capsys):
    # Every table in the README and the results record is regenerated from results/ and must be unchanged.
    monkeypatch.chdir(REPO)
    code = main(["tables", "--check", "README.md", "docs/results.md"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "README.md: 23 tables, 0 stale" in captured.out
    assert "docs/results.md: 38 tables, 0 stale" in captured.out


def _two_methods(root: Path) -> None:
    for method in ("mlp_bc", "no_prompts"):
        for seed in (0, 1):
            src = REPO / "results" / "ml10" / method / f"seed{seed}"
            shutil.copytree(src, root / "results" / method / f"seed{seed}")


def _seen_mean(root: Path, method: str) -> float:
    rates = []
    for seed in (0, 1):
        data = json.loads((root / "results" / method / f"seed{seed}" / "eval.json").read_text())
        rates.append(100 * data["seen"]["success_mean"])
    return sum(rates) / len(rates)


def test_a_stale_table_is_named_then_rewritten(tmp_path, monkeypatch, capsys):
    _two_methods(tmp_path)
    monkeypatch.chdir(tmp_path)
    command = "llmdpd compare results/{mlp_bc,no_prompts}/* --baseline mlp_bc"
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Doc\n\n<!-- table: {command} -->\n| old | table |\n<!-- end table -->\n\nAfter.\n")

    assert main(["tables", "--check", "doc.md"]) == 1
    assert f"stale table: {command}" in capsys.readouterr().err
    assert "| old | table |" in doc.read_text()  # --check rewrites nothing

    assert main(["tables", "doc.md"]) == 0
    text = doc.read_text()
    assert "| old | table |" not in text and text.endswith("<!-- end table -->\n\nAfter.\n")
    assert f"```bash\n{command}\n```" in text
    assert f"| mlp_bc | 2 | {_seen_mean(tmp_path, 'mlp_bc'):.1f} ± " in text
    assert "Paired bootstrap against mlp_bc" in text and "| no_prompts | seen | 2 | 10 |" in text
    capsys.readouterr()
    assert main(["tables", "--check", "doc.md"]) == 0
    assert "doc.md: 1 tables, 0 stale" in capsys.readouterr().out


def test_a_failing_command_is_one_line_and_leaves_the_file(tmp_path, monkeypatch, capsys):
    _two_methods(tmp_path)
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "doc.md"
    original = "<!-- table: llmdpd compare results/*/* --baseline nothing_like_it -->\nbody\n<!-- end table -->\n"
    doc.write_text(original)
    assert main(["tables", "doc.md"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tables: doc.md: 'llmdpd compare") and "nothing_like_it" in err and "\n" not in err
    assert doc.read_text() == original
    assert main(["tables", "missing.md"]) == 2
    assert "no such file: missing.md" in capsys.readouterr().err


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("results/{b,a}/*", ["results/b/seed0", "results/b/seed1", "results/a/seed0"]),
        ("results/a/seed{1,0}", ["results/a/seed1", "results/a/seed0"]),
        ("results/none/*", ["results/none/*"]),  # unmatched: kept, as bash does
        ("--baseline", ["--baseline"]),
    ],
)
def test_expand_is_bash_brace_then_sorted_glob(tmp_path, monkeypatch, pattern, expected):
    for name in ("a/seed0", "b/seed0", "b/seed1"):
        (tmp_path / "results" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert expand(pattern) == expected


def test_a_bad_command_in_a_block_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "doc.md").write_text("<!-- table: llmdpd compare --no-such-option x -->\n<!-- end table -->\n")
    assert main(["tables", "doc.md"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a valid command" in err and "--no-such-option" in err and "\n" not in err


BLOCK_OF_TWO = "<!-- table: llmdpd compare results/*/* --group-by parent -->\n<!-- end table -->\n"


def _results_repository(tmp_path, readme: str, *extra: tuple[str, str]):
    """A git repository at tmp_path: mlp_bc's results and `readme` (and any (name, text) files) committed,
    no_prompts' results not yet; returns a function that runs git there and gives its output."""
    import subprocess

    _two_methods(tmp_path)
    (tmp_path / "README.md").write_text(readme)
    for name, text in extra:
        (tmp_path / name).write_text(text)

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *argv], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    git("add", "README.md", "results/mlp_bc", *(name for name, _ in extra))
    git("commit", "-q", "-m", "start")
    (tmp_path / "results" / ".locks").mkdir()
    return git


def test_a_comparison_commit_carries_the_regenerated_tables(tmp_path):
    # `llmdpd comparison --commit` commits a finished run's results with the documents' tables made from them.
    from llmdpd.cli.comparison import _commit

    git = _results_repository(tmp_path, BLOCK_OF_TWO)

    _commit(tmp_path / "results" / "no_prompts", "results: no_prompts", tmp_path / "results" / ".locks")

    shown = git("show", "--stat", "--format=%s", "HEAD")
    assert shown.startswith("results: no_prompts") and "README.md" in shown and "no_prompts/seed1/eval.json" in shown
    readme = git("show", "HEAD:README.md")
    assert "| mlp_bc | 2 |" in readme and "| no_prompts | 2 |" in readme
    assert git("status", "--porcelain", "--untracked-files=no") == ""


def test_a_comparison_commit_leaves_prose_being_written_out(tmp_path):
    # The commit holds the committed document with its tables regenerated; a draft in the working copy stays a draft
    # (its tables refreshed too), and nothing else staged is swept in.
    from llmdpd.cli.comparison import _commit

    git = _results_repository(tmp_path, "# Title\n" + BLOCK_OF_TWO, ("other.txt", "one\n"))
    (tmp_path / "README.md").write_text("# Title\nA DRAFT PARAGRAPH.\n" + BLOCK_OF_TWO)
    (tmp_path / "other.txt").write_text("two\n")
    git("add", "other.txt")  # staged by hand, not the comparison's to commit
    locks = tmp_path / "results" / ".locks"

    _commit(tmp_path / "results" / "no_prompts", "results: no_prompts", locks)

    assert git("show", "--format=%s", "--name-only", "HEAD").split() == [
        "results:", "no_prompts", "README.md", *sorted(git("ls-files", "results/no_prompts").split())]
    committed = git("show", "HEAD:README.md")
    assert "| no_prompts | 2 |" in committed and "DRAFT" not in committed and committed.startswith("# Title\n<!--")
    working = (tmp_path / "README.md").read_text()
    assert "DRAFT" in working and "| no_prompts | 2 |" in working
    assert git("status", "--porcelain", "--untracked-files=no").splitlines() == [" M README.md", "M  other.txt"]
    _commit(tmp_path / "results" / "no_prompts", "results: no_prompts again", locks)  # nothing new: no commit
    assert git("log", "--format=%s").splitlines() == ["results: no_prompts", "start"]


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # `llmdpd tables ... | head -1`: the pipe closes before the second line; no traceback, exit status 0.
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "llmdpd", "tables", "--check", "README.md", "docs/results.md"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and b"Traceback" not in err, err.decode()
