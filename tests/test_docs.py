"""The guides: the site builds in strict mode (a broken link or a missing page fails), and every
`dtmerge` command they show names a real command and real options."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dtmerge.cli import main

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert (site / "merging" / "index.html").is_file()


def _commands():
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                if line.startswith("dtmerge "):
                    yield pytest.param(page.name, shlex.split(line)[1:], id=f"{page.name}: {line[:60]}")


@pytest.mark.parametrize("page,args", list(_commands()))
def test_every_command_in_the_guides_is_a_real_one(page, args):
    command, rest = main, list(args)
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, f"{page}: no command {rest[:1]} in `dtmerge {' '.join(args)}`"
        command, rest = command.commands[rest[0]], rest[1:]
    options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=")[0] in options, f"{page}: `dtmerge {' '.join(args)}` has no option {token}"


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
