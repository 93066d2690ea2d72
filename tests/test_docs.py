"""The documentation: README is a front page (at most 15 KB) whose relative links resolve, and the docs site
builds with `mkdocs build --strict` (no page left out of the navigation, no broken link or anchor).

Run: pytest tests/test_docs.py
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_a_front_page_whose_relative_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15 * 1024
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets, "README links to no page"
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "sensitivity" / "index.html").is_file()
