"""README's examples run as written, in order, on a fresh database (both backends).

Every fenced block opened with ```` ```sh ```` is an example and runs here; a synopsis of a
command's options is a ```` ```text ```` block and does not. An example block may hold
``callgate ...`` commands (a ``\\`` continues a line, ``#`` starts a comment), and files written
with ``cat > FILE <<'EOF'`` ... ``EOF``; anything else is refused, so that the README cannot
grow an example this test silently skips. The set-up block (``pip install``) is what CI itself
runs and is left out. The commands run in-process through click, in a temporary directory, all
against one database, so a later example may use what an earlier one created, as a reader who
types them in order would.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from callgate.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"

_HEREDOC = re.compile(r"^cat > (?P<file>\S+) <<'?(?P<end>\w+)'?$")


@dataclass(frozen=True)
class Step:
    line: int  # README line the step starts on
    argv: tuple[str, ...] = ()  # a callgate command
    file: str = ""  # or a file to write
    content: str = ""


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """The ```sh blocks as (first line number, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i + 2
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, body))
        i += 1
    return blocks


def readme_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    for start, body in _blocks(text):
        if any("pip install" in line for line in body):
            continue
        i = 0
        while i < len(body):
            number = start + i
            line = body[i].strip()
            i += 1
            if not line or line.startswith("#"):
                continue
            heredoc = _HEREDOC.match(line)
            if heredoc:
                content: list[str] = []
                while i < len(body) and body[i] != heredoc["end"]:
                    content.append(body[i])
                    i += 1
                if i == len(body):
                    raise AssertionError(f"README line {number}: heredoc without {heredoc['end']}")
                i += 1
                steps.append(Step(number, file=heredoc["file"], content="\n".join(content) + "\n"))
                continue
            while line.endswith("\\") and i < len(body):
                line = line[:-1] + " " + body[i].strip()
                i += 1
            words = shlex.split(line, comments=True)
            if not words or words[0] != "callgate":
                raise AssertionError(
                    f"README line {number}: an sh example may hold only callgate commands and "
                    f"cat > FILE heredocs (make a synopsis a text block): {line!r}"
                )
            steps.append(Step(number, argv=tuple(words[1:])))
    return steps


def test_the_parser_reads_commands_heredocs_and_refuses_the_rest() -> None:
    text = "\n".join(
        [
            "intro",
            "```sh",
            "cat > deck.csv <<'EOF'",
            "prefix,rate",
            "44,0.1",
            "EOF",
            "callgate tables add std \\",
            "    --trunk a   # a comment",
            "```",
            "```text",
            "callgate [anything] | goes",
            "```",
        ]
    )
    steps = readme_steps(text)
    assert steps == [
        Step(3, file="deck.csv", content="prefix,rate\n44,0.1\n"),
        Step(7, argv=("tables", "add", "std", "--trunk", "a")),
    ]
    with pytest.raises(AssertionError, match="line 3"):
        readme_steps("x\n```sh\nrm -rf /\n```\n")


def test_readme_examples_run_as_written(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = readme_steps(README.read_text(encoding="utf-8"))
    assert len([s for s in steps if s.argv]) >= 15, "README lost its examples"
    monkeypatch.chdir(tmp_path)
    env = {"CALLGATE_DATABASE_URL": db_url, "CALLGATE_CONFIG": ""}
    runner = CliRunner()
    for step in steps:
        if step.file:
            (tmp_path / step.file).write_text(step.content, encoding="utf-8")
            continue
        result = runner.invoke(cli, list(step.argv), env=env, catch_exceptions=False)
        assert result.exit_code == 0, (
            f"README line {step.line}: callgate {shlex.join(step.argv)} exited "
            f"{result.exit_code}:\n{result.output}"
        )
