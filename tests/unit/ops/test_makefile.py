"""`make help` names every target the Makefile declares (a newcomer's first command)."""

from __future__ import annotations

import re
import subprocess

from tests.support.paths import ROOT


def test_make_help_lists_every_phony_target() -> None:
    makefile = (ROOT / "Makefile").read_text("utf-8")
    declared = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", makefile, re.M | re.S)
    assert declared is not None
    targets = set(declared.group(1).replace("\\\n", " ").split()) - {"help"}
    shown = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {line.split()[1] for line in shown.splitlines() if line.startswith("make ")}
    assert targets == listed, (targets - listed, listed - targets)
