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
