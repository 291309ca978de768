"""``nnunet-semisup --help`` and every sub-command's ``--help``: each command has a description and a one-line
help, each option a help text, and no text shows reST markup (the docstrings' ````code```` or ``:class:``).
Deprecated spellings (:func:`nnunet_semisup.cli_args.deprecated_alias`) are hidden from the help and not checked.
Also checks that the README's Workflow commands use flags the parsers know, in their current spelling."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from nnunet_semisup.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
MARKUP = ("``", ":class:", ":func:", ":meth:", ":mod:", ":attr:")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    """name -> (sub-parser, its one-line help in the top-level listing)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (sub, helps.get(name)) for name, sub in action.choices.items()}


SUBCOMMANDS = sorted(_subcommands(build_parser()))


def _no_markup(text: str, where: str) -> None:
    for mark in MARKUP:
        assert mark not in text, f"{where}: reST markup {mark!r} in {text!r}"


def test_top_level_help_lists_every_command_without_markup():
    parser = build_parser()
    assert parser.description and parser.description.strip()
    text = parser.format_help()
    _no_markup(text, "nnunet-semisup --help")
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_and_option_has_help(name):
    sub, one_line = _subcommands(build_parser())[name]
    assert one_line and one_line.strip(), f"{name}: no help in the command list"
    assert sub.description and sub.description.strip(), f"{name}: no description"
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"nnunet-semisup {name} {label}: no help"
    text = sub.format_help()
    _no_markup(text, f"nnunet-semisup {name} --help")
    _no_markup(one_line, f"nnunet-semisup --help ({name})")


def _readme_commands() -> list[list[str]]:
    """The ``nnunet-semisup`` lines of the README's Workflow section, as argument lists (comments, ``\\``
    continuations and shell variables handled)."""
    text = README.read_text()
    section = text.split("## Workflow", 1)[1].split("\n## ", 1)[0]
    lines, current = [], ""
    for raw in section.splitlines():
        line = raw.split("  #", 1)[0].rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        line = (current + line).strip()
        current = ""
        if line.startswith("nnunet-semisup "):
            lines.append(shlex.split(line)[1:])
    return lines


def test_readme_workflow_commands_parse_with_current_flags(capsys):
    commands = _readme_commands()
    assert commands, "no nnunet-semisup line found in the README's Workflow section"
    parser = build_parser()
    for argv in commands:
        # placeholders (D, IN, $VAR) are fine for argparse; a misspelt or removed flag is not
        parser.parse_args(argv)
        err = capsys.readouterr().err
        assert "deprecated" not in err, (
            f"README uses a deprecated spelling: nnunet-semisup {' '.join(argv)}: {err}"
        )
