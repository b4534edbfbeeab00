"""`llmdpd tables [--check] FILE ...`: regenerate (or check) the tables of markdown files from `results/`.

A table is a block that names the `llmdpd compare` command which prints it:

    <!-- table: llmdpd compare results/ml10/*/* --baseline llmdpd -->
    ...the command, then its output...
    <!-- end table -->

The block's body is rewritten as the command in a code block followed by what it prints, run from the current
directory (bash-style `{a,b}` and glob patterns expanded, each sorted). `--check` rewrites nothing and fails, naming
each stale block, when a body differs: a documented figure cannot drift from the files it came from.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import re
import shlex
import sys
from pathlib import Path
from typing import Callable

from llmdpd.files import write_text_atomic

BLOCK = re.compile(r"(<!-- table: (llmdpd compare [^\n]*?) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)
BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `tables` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "tables",
        help="regenerate (or --check) the `llmdpd compare` tables of markdown files",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="markdown files holding table blocks")
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a table is stale")
    parser.set_defaults(run=run)
    return parser


def expand(pattern: str) -> list[str]:
    """Bash's expansion of one word: braces first (left to right, unnested), then a sorted glob if it has one."""
    match = BRACES.search(pattern)
    if match:
        return [word for choice in match.group(1).split(",")
                for word in expand(pattern[: match.start()] + choice + pattern[match.end():])]
    if any(ch in pattern for ch in "*?["):
        return sorted(glob.glob(pattern)) or [pattern]  # bash keeps an unmatched pattern as it is
    return [pattern]


def render(command: str) -> str:
    """The body of a block: the command, then its standard output (a ValueError if the command fails)."""
    from llmdpd.cli.main import build_parser

    words = shlex.split(command)[1:]  # without the program name
    argv = [word for item in words for word in expand(item)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise ValueError(f"'{command}' is not a valid command: {err.getvalue().strip().splitlines()[-1]}") from None
        code = args.run(args)
    if code != 0:
        raise ValueError(f"'{command}' failed: {err.getvalue().strip() or f'exit status {code}'}")
    return f"```bash\n{command}\n```\n\n{out.getvalue().rstrip()}\n"


def refresh(text: str, render_block: Callable[[str], str] = render) -> tuple[str, list[str]]:
    """`text` with every table block regenerated (by `render_block`, e.g. a cached `render` when several texts share
    commands), and the commands of the blocks whose body changed."""
    stale: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match.group(2))
        if body != match.group(3):
            stale.append(match.group(2))
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), stale


def refresh_file(path: Path, write: bool = True, render_block: Callable[[str], str] = render) -> tuple[int, list[str]]:
    """Regenerate `path`'s tables (rewritten in one atomic replace when `write` and one changed); the number of
    blocks and the commands of the stale ones. A ValueError names a block whose command fails."""
    text = path.read_text()
    new, stale = refresh(text, render_block)
    if write and stale:
        write_text_atomic(path, new)
    return len(BLOCK.findall(text)), stale


def run(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            print(f"tables: no such file: {name}", file=sys.stderr)
            return 2
        try:
            blocks, stale = refresh_file(path, write=not args.check)
        except ValueError as err:
            print(f"tables: {name}: {err}", file=sys.stderr)
            return 2
        if args.check:
            for command in stale:
                print(f"tables: {name}: stale table: {command}", file=sys.stderr)
            failed |= bool(stale)
        print(f"{name}: {blocks} tables, {len(stale)} {'stale' if args.check else 'rewritten'}")
    return 1 if failed else 0
