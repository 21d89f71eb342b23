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


def _tour() -> list[str]:
    text = README.read_text()
    section = text[text.index("## A tour of the CLI"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_cli_tour_runs_as_written(tmp_path):
    """Every line of the tour, in order, from an empty folder, with the installed `edgeship` command."""
    import json
    import os
    import shlex
    import subprocess
    import sys

    lines = _tour()
    assert lines[0].startswith("edgeship demo") and any(l.startswith("edgeship run") for l in lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "160"}
    for line in lines:
        args = shlex.split(line)
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode == 1 and args[1] == "optimize":  # documented: nothing fits, the report says why
            report = json.loads((tmp_path / args[args.index("--out") + 1] / "report.json").read_text())
            assert report["best"] is None and report["nothing_fits"]["why"], line
            continue
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    with __import__("numpy").load(tmp_path / "y.npz") as outputs:
        assert outputs[outputs.files[0]].shape == (4, 10)  # the bundle ran the four sample digits
    assert (tmp_path / "device-state" / "accepted-versions.json").is_file()
