"""The README's commands exist as shown (issue 29): every `patent-risk ...` / `evaluate ...` usage in the code
blocks of the README and of docs/cli.md (the command reference) names a real (sub)command, its `--help` runs,
and every flag the usage shows is one of that command's.

Usage lines are a block line that starts with the command and the lines that continue it (indented further than
the four spaces of a description, or ending in a backslash); a ` -- ` ends the project's flags (what follows
goes to vLLM). Descriptions under a usage are prose and may name other commands' flags, so they are not read."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"
CLI_DOC = README.parent / "docs" / "cli.md"
PROGRAMS = ("patent-risk", "evaluate")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?=[\s=\]|,)]|$)")


def _blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line[3:].strip() in ("", "sh", "text", "bash", "console") else None
                if current is None:
                    current = ["<skip>"]
            else:
                if current and current[0] != "<skip>":
                    blocks.append(current)
                current = None
            continue
        if current is not None:
            current.append(line)
    return blocks


def readme_usages(path: Path = README) -> list[str]:
    """Each command usage in a Markdown file's code blocks, continuation lines joined."""
    usages: list[str] = []
    for block in _blocks(path.read_text(encoding="utf-8")):
        current: str | None = None
        for line in block:
            stripped = line.strip()
            words = stripped.split()
            first = words[0].rsplit("/", 1)[-1] if words else ""
            if first in PROGRAMS and not line.startswith(" " * 4):
                if current:
                    usages.append(current)
                current = " ".join([first, *words[1:]])
            elif current is not None and stripped and (line.startswith(" " * 5) or current.endswith("\\")):
                current = current.rstrip("\\") + " " + stripped
            else:
                if current:
                    usages.append(current)
                current = None
        if current:
            usages.append(current)
    return [re.sub(r"\s+#.*$", "", u) for u in usages]


def _resolve(usage: str) -> tuple[list[str], click.Command]:
    from patent_risk.cli.main import main

    words = usage.split()
    path = ["evaluate"] if words[0] == "evaluate" else []
    cmd: click.Command = main
    for name in path + words[1:]:
        if isinstance(cmd, click.Group) and name in cmd.commands:
            cmd = cmd.commands[name]
            path.append(name) if name != "evaluate" or path != ["evaluate"] else None
        else:
            break
    # `evaluate X` is `patent-risk evaluate X`
    return path, cmd


def _flags_of(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


USAGES = [("README", u) for u in readme_usages()] + [("docs/cli.md", u) for u in readme_usages(CLI_DOC)]


def test_the_readme_and_the_reference_show_commands():
    readme = readme_usages()
    assert len(readme) >= 12, readme
    for program in ("evaluate validate", "patent-risk train qlora", "evaluate batch", "evaluate baseline",
                    "evaluate report", "patent-risk serve start", "patent-risk serve bench"):
        assert any(u.startswith(program) for u in readme), f"the README shows no {program}"
    reference = readme_usages(CLI_DOC)
    assert len(reference) >= 15, reference
    assert any(u.startswith("evaluate batch") for u in reference) and any(u.startswith("patent-risk serve start") for u in reference)


@pytest.mark.parametrize("where,usage", USAGES, ids=lambda u: " ".join(u.split()[:3]))
def test_each_readme_command_and_flag_exists(where, usage):
    path, cmd = _resolve(usage)
    assert not isinstance(cmd, click.Group) or usage.split()[-1] in ("-h", "--help"), \
        f"{where}: {usage!r} names no subcommand of {' '.join(['patent-risk', *path])}"
    from patent_risk.cli.main import main

    done = CliRunner().invoke(main, [*path, "--help"])
    assert done.exit_code == 0, done.output
    project_part = usage.split(" -- ")[0]
    shown = set(_FLAG.findall(project_part))
    unknown = sorted(shown - _flags_of(cmd))
    assert not unknown, f"{where}: {usage!r}: {' '.join(['patent-risk', *path])} has no {', '.join(unknown)}"


def test_the_check_finds_a_flag_that_does_not_exist():
    path, cmd = _resolve("evaluate batch --data FILE --no-such-flag")
    assert path == ["evaluate", "batch"]
    assert "--no-such-flag" not in _flags_of(cmd) and "--engine-arg" in _flags_of(cmd)


def test_nothing_a_user_reads_points_outside_the_repository():
    """Code, docstrings, --help, the README and docs/ name docs/formats.md for the formats, never a CONTRACT.md or
    ../shared that a clone of this repository does not hold."""
    root = README.parent
    hits = []
    for path in [README, *sorted((root / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "CONTRACT.md" in line or "../shared" in line:
                hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    for folder in ("bench", "cli", "datagen", "evaluate", "patent_risk", "runtime", "schemas", "serve", "train"):
        for path in sorted((root / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "CONTRACT.md" in line or "../shared" in line:
                    hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
    assert (root / "docs" / "formats.md").exists()


def test_the_readme_links_only_to_files_it_holds():
    """Every relative link in the README and docs/ points at a file of the repository."""
    import re as _re

    root = README.parent
    broken = []
    for path in [README, *sorted((root / "docs").glob("*.md"))]:
        for target in _re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(root)}: {target}")
    assert not broken, broken


def test_sections_the_code_cites_exist():
    """`README, 'Your own prompt'` in a --help or docstring names a heading the README has."""
    root = README.parent
    headings = {line.lstrip("#").strip() for line in README.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")}
    missing = []
    for folder in ("bench", "cli", "datagen", "evaluate", "runtime", "schemas", "serve", "train"):
        for path in sorted(p for p in (root / folder).rglob("*") if p.suffix in (".py", ".yaml")):
            for title in re.findall(r"README, [\"']([^\"']+)[\"']", path.read_text(encoding="utf-8")):
                if title not in headings:
                    missing.append(f"{path.relative_to(root)}: README, {title!r}")
    assert not missing, missing
