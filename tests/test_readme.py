"""The README's Python snippet is real: it runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        if "InferenceServerClient" in block:  # needs a running server: tests/test_server.py runs it
            continue
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("static-int8-minmax "))
    assert float(line.split()[2]) > 3.0  # the int8 candidate is really smaller
    assert "best: " in out
    assert (tmp_path / "edgeship-out" / "report.json").is_file()
    assert (tmp_path / "digits-1.edgeship").is_file()  # the bundle snippet packed the best model
    assert '{"digits": 1}' in (tmp_path / "device-state" / "accepted-versions.json").read_text()


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_recipe_yaml_loads(tmp_path):
    from edgeship.recipes import load_recipe_file

    (yaml_block,) = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    path = tmp_path / "r.yaml"
    path.write_text(yaml_block)
    (recipe,) = load_recipe_file(path)
    assert [s.name for s in recipe.steps] == ["optimize_graph", "quantize_dynamic"]
