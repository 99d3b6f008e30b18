"""Every Python snippet in README.md runs as written (in a folder holding the lr.png and
ref.jpg it names: small crops of the bundled demo images, to keep the test quick)."""
import re
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    from frfsr.demo import ASSETS
    Image.open(ASSETS / "lr.png").crop((0, 0, 24, 20)).save(tmp_path / "lr.png")
    Image.open(ASSETS / "ref.png").convert("RGB").crop((0, 0, 96, 80)).save(tmp_path / "ref.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {"__name__": "__readme__"})


def test_layout_table_matches_the_tree():
    """The README's layout table names every module and package of frfsr/ (and the other
    top-level folders), and everything it names exists."""
    root = README.parent
    text = README.read_text()
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 1)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        cell = row.split("|")[1]
        base = ""
        for item in re.findall(r"`([^`]+)`", cell):
            path = item.rstrip("/")
            if "/" in path:
                base = path.rsplit("/", 1)[0] + "/" if not item.endswith("/") else path.rsplit("/", 1)[0] + "/"
                named.add(path)
            else:
                named.add(base + path)          # `hub.py` after `frfsr/pipeline.py` means frfsr/hub.py
    missing = [p for p in sorted(named) if not (root / p).exists()]
    assert not missing, f"the layout table names what does not exist: {missing}"
    tree = {f"frfsr/{p.name}" for p in (root / "frfsr").iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    unnamed = sorted(tree - named)
    assert not unnamed, f"modules of frfsr/ missing from the README's layout table: {unnamed}"
    for folder in ("frfsr_nodes", "train", "benchmarks", "tests", "workflows"):
        assert folder in named, folder
