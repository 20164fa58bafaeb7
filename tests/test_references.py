"""Documents the repository names are in the repository: every `*.md` a
tracked file refers to exists (relative to that file, or to the repo root).
Names in quotes are code building a path (checked by its own test), not prose."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN_NAME = re.compile(r"(?<![\w./:\"-])([\w.-]+(?:/[\w.-]+)*\.md)\b")
# Upstream documents cited by URL are not the repository's.
URL = re.compile(r"https?://\S+")


def tracked_text_files():
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        path = ROOT / name
        try:
            yield path, path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue


def test_every_markdown_reference_exists():
    dangling = []
    for path, text in tracked_text_files():
        for name in MARKDOWN_NAME.findall(URL.sub("", text)):
            if not ((path.parent / name).exists() or (ROOT / name).exists()):
                dangling.append(f"{path.relative_to(ROOT)}: {name}")
    assert not dangling, dangling
