"""The README's first screen is tested (STYLE.md rule 12): the quick-start command a newcomer
copies runs the example pipeline end to end, in a copy of ``examples/quickstart`` so its
database does not land in the repository."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "cd examples/quickstart && "


def first_bash_command(readme: str) -> str:
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no fenced bash block"
    return " ".join(block.group(1).split())


@pytest.mark.timeout(150)
def test_readme_quickstart_runs(tmp_path: Path) -> None:
    command = first_bash_command((ROOT / "README.md").read_text())
    assert PREFIX in command, command
    argv = shlex.split(command.split(PREFIX, 1)[1])
    example = tmp_path / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", example,
                    ignore=shutil.ignore_patterns("*.db", "*.db-*", "__pycache__"))
    # The command's interpreter is relative to examples/quickstart (the venv's python); keep
    # the symlink (resolving it would leave the venv). Without a venv there, use ours.
    interpreter = os.path.normpath(ROOT / "examples" / "quickstart" / argv[0])
    argv[0] = interpreter if os.path.exists(interpreter) else sys.executable

    proc = subprocess.run(argv, cwd=example, capture_output=True, text=True, timeout=140,
                          env={**os.environ, "PYTHONPATH": ""}, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "8 thumbnails" in proc.stdout, output
    assert "status completed" in proc.stdout, output
    assert (example / "jobs.db").exists()  # it ran here, not in the repository
