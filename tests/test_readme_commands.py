"""Every command the README and docs/DEPLOY.md show exists: make targets, `onnxvq` subcommands
and their flags, the project's scripts and their flags, the C++ runner's flags.

Commands are read from fenced code blocks (shell-like ones: no language, bash, sh, console)
and from inline `code` spans that start with a command. One test per command, named after
its document and line, so a failure says which command and which flag is missing. Bare flag
spans (`--jobs N`) must be an option of some onnxvq subcommand or of the runner.
"""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/DEPLOY.md")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
RUNNER_SOURCE = ROOT / "custom_ops" / "runner" / "runner.cc"
# Folders whose scripts the docs may show being run.
SCRIPT_DIRS = ("bench", "models", "scripts")


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    text: str
    words: tuple[str, ...]

    def __str__(self):
        return f"{self.document}:{self.line}: {self.text}"


# --- reading the documents ------------------------------------------------------------------

def _split(text: str) -> list[list[str]]:
    """Shell words of one logical line, split at &&, ;, | (comments dropped)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quote: not a shell line
        return []
    commands, current = [], []
    for word in words:
        if word in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands + [current] if c]


def _fenced_lines(text: str):
    """(line number, logical line) of the shell-like fenced blocks; backslash continuations joined."""
    language, pending, start = None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence:
            language = None if language is not None else fence.group(1).lower()
            continue
        if language not in SHELL_LANGUAGES:
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", 0


def _inline_spans(text: str):
    """(line number, span) of the inline `code` spans outside fenced blocks."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*```", line):
            in_fence = not in_fence
            continue
        if not in_fence:
            for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
                yield number, span.replace(r"\|", "|")


def commands_of(document: str, text: str | None = None) -> list[Command]:
    text = (ROOT / document).read_text() if text is None else text
    found = []
    for number, line in _fenced_lines(text):
        found += [Command(document, number, line.strip(), tuple(w)) for w in _split(line)]
    for number, span in _inline_spans(text):
        for words in _split(span):
            if _tool(words) is not None or words[0].startswith("--"):
                found.append(Command(document, number, f"`{span}`", tuple(words)))
    return [c for c in found if _tool(c.words) is not None or c.words[0].startswith("--")]


def _is_script(word: str) -> bool:
    return word.endswith((".py", ".sh")) and word.split("/")[0] in SCRIPT_DIRS


def _tool(words) -> int | None:
    """Index of the word that names a command this test knows, or None (pip, cmake, tar, prose)."""
    first = words[0].rsplit("/", 1)[-1]
    if words[0] == "make" or first in ("onnxvq", "onnxvq_runner") or _is_script(words[0]):
        return 0
    if (first.startswith("python") or first in ("bash", "sh")) and len(words) > 1 and _is_script(words[1]):
        return 1
    if first.startswith("qemu-"):  # qemu-aarch64 [its flags] build/.../onnxvq_runner ...
        return next((i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] == "onnxvq_runner"), None)
    return None


# --- what exists ----------------------------------------------------------------------------

@functools.cache
def make_targets() -> frozenset[str]:
    """Targets of the Makefile and mk/*.mk, from make's own database (nothing is run: -q)."""
    done = subprocess.run(["make", "-pRrq", "-f", "Makefile"], cwd=ROOT, capture_output=True, text=True)
    targets, skip = set(), False
    for line in done.stdout.splitlines():
        if line.startswith("# Not a target"):
            skip = True
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.-]*):(?!=)", line)
        if match and not skip:
            targets.add(match.group(1))
        skip = False
    assert {"help", "test"} <= targets, f"could not read make's database: {done.stderr[-2000:]}"
    return frozenset(targets)


def _click_options(command: click.Command) -> set[str]:
    names = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names | {"--help"}


@functools.cache
def cli_commands() -> dict[str, set[str]]:
    from onnxvq.cli import main

    commands = {name: _click_options(cmd) for name, cmd in main.commands.items()}
    commands[""] = _click_options(main)  # options of `onnxvq` itself (--version, --help)
    return commands


@functools.cache
def script_options(script: str) -> frozenset[str]:
    """The flags a script's --help lists (argparse), or its flag strings for shell scripts."""
    path = ROOT / script
    if script.endswith(".py"):
        done = subprocess.run([sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{script} --help failed: {done.stderr[-2000:]}"
        text = done.stdout
    else:
        text = path.read_text()
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


@functools.cache
def runner_options() -> frozenset[str]:
    return frozenset(re.findall(r'"(--?[a-z][\w-]*)"', RUNNER_SOURCE.read_text()))


# --- the checks -----------------------------------------------------------------------------

def _flags(words) -> list[str]:
    """The option names among words (--x=1 -> --x); negative numbers are values, not flags."""
    return [w.split("=", 1)[0] for w in words if re.match(r"^--?[A-Za-z]", w)]


def problems_of(command: Command) -> list[str]:
    words = list(command.words)
    if words[0].startswith("--"):  # a bare flag span: some tool must have it
        known = set().union(*cli_commands().values(), runner_options())
        return [f"no onnxvq subcommand nor the runner has the option {f}" for f in _flags(words) if f not in known]
    start = _tool(words)
    tool, args = words[start], words[start + 1:]
    name = tool.rsplit("/", 1)[-1]
    if tool == "make":
        goals = [a for a in args if not a.startswith("-") and "=" not in a]
        return [f"make has no target '{g}' (Makefile, mk/*.mk)" for g in goals if g not in make_targets()]
    if name == "onnxvq_runner":
        return [f"onnxvq_runner has no option {f} ({RUNNER_SOURCE.relative_to(ROOT)})"
                for f in _flags(args) if f not in runner_options()]
    if name == "onnxvq":
        commands = cli_commands()
        sub = next((a for a in args if not a.startswith("-")), "")
        if sub == "...":  # `onnxvq compress ...`-style elisions name no subcommand
            sub = ""
        if sub not in commands:
            return [f"onnxvq has no subcommand '{sub}' (has: {', '.join(sorted(c for c in commands if c))})"]
        missing = [f for f in _flags(args) if f not in commands[sub]]
        return [f"`onnxvq {sub}` has no option {f}" for f in missing]
    if not (ROOT / tool).is_file():
        return [f"{tool} does not exist"]
    return [f"{tool} has no option {f} (not in its --help)" for f in _flags(args) if f not in script_options(tool)]


ALL_COMMANDS = [c for d in DOCUMENTS for c in commands_of(d)]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_documented_command_exists(command):
    problems = problems_of(command)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


def test_the_documents_show_commands():
    """The parser finds the commands it must (an empty list would make every check pass)."""
    shown = {" ".join(c.words[:2]) for c in ALL_COMMANDS}
    assert {"make demo", "make test", "make wheel", ".venv/bin/onnxvq compress", "make runner"} <= shown, shown
    assert any(c.words[0] == "bench/kernels.py" for c in ALL_COMMANDS), "README's bench/kernels.py line"


def test_a_missing_flag_or_target_is_reported():
    """A README that shows what does not exist fails, naming the command and the flag."""
    text = "\n".join([
        "```bash",
        ".venv/bin/onnxvq compress model.onnx -o out.onnx --method pq \\",
        "    --no-such-flag 3",
        "make no-such-target",
        "onnxvq no-such-subcommand model.onnx",
        "```",
        "Run `bench/kernels.py --no-such-bench-flag` or pass `--jobs 2 --no-such-option`.",
    ])
    reported = [(c.line, p) for c in commands_of("README.md", text) for p in problems_of(c)]
    assert [line for line, _ in reported] == [2, 4, 5, 7, 7], reported
    assert reported[0][1] == "`onnxvq compress` has no option --no-such-flag"
    assert reported[1][1] == "make has no target 'no-such-target' (Makefile, mk/*.mk)"
    assert reported[2][1].startswith("onnxvq has no subcommand 'no-such-subcommand' (has: ")
    assert reported[3][1] == "bench/kernels.py has no option --no-such-bench-flag (not in its --help)"
    assert reported[4][1] == "no onnxvq subcommand nor the runner has the option --no-such-option"
