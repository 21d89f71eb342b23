"""Classic ML on microcontrollers: scikit-learn trees and MLPs to C through emlearn. The C is
compiled with gcc and run on held-out digits, so the accuracy is the firmware code's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import edgeship
from edgeship.engines.emlearn.convert import HostBuild, c_footprint, classic_fit, export_classic, to_c
from edgeship.targets.profiles import load_profile

MCUS = {"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "esp32-s3", "rp2040", "nrf52840"}


@pytest.fixture(scope="module")
def digits64():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.fixture(scope="module")
def fitted(digits64):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    x, y, _, _ = digits64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP's convergence warning at 300 iterations
        mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x, y)
    return {"mlp": mlp, "forest": RandomForestClassifier(n_estimators=10, max_depth=8, random_state=0).fit(x, y)}


def test_the_compiled_mlp_keeps_scikit_learns_accuracy(fitted, digits64):
    _, _, x, y = digits64
    ours = HostBuild(to_c(fitted["mlp"])).predict(x)
    theirs = fitted["mlp"].predict(x)
    assert (ours == theirs).mean() >= 0.99
    assert (ours == y).mean() >= (theirs == y).mean() - 0.01


def test_the_compiled_forest_is_within_two_points(fitted, digits64):
    """emlearn's forest votes by majority where scikit-learn averages probabilities: a few rows differ."""
    _, _, x, y = digits64
    ours = HostBuild(to_c(fitted["forest"])).predict(x)
    assert (ours == y).mean() >= (fitted["forest"].predict(x) == y).mean() - 0.02


def test_flash_holds_the_mlps_weights_as_float_constants(fitted):
    mlp = fitted["mlp"]
    params = sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_)
    size = c_footprint(to_c(mlp))
    assert 4 * params <= size["constants"] <= 4 * params + 1024
    assert size["bss"] >= 4 * 2 * 32  # eml_net's two activation buffers, floats of the widest layer


def test_the_export_builds_on_its_own_and_fits_every_microcontroller(fitted, digits64, tmp_path):
    import shutil

    _, _, x, y = digits64
    result = export_classic(fitted["mlp"], tmp_path / "fw", "digits", x, y)
    assert {f.name for f in result.files} >= {"digits.h", "main.c", "eml_net.h"}
    assert result.accuracy["agreement"] >= 0.99
    exe = tmp_path / "fw" / "main"
    subprocess.run([shutil.which("gcc"), "-std=c99", "-Wall", "-o", str(exe), str(tmp_path / "fw" / "main.c"),
                    "-I", str(tmp_path / "fw"), "-lm"], check=True, capture_output=True, text=True)
    assert subprocess.run([str(exe)]).returncode == 0
    fits = {f["target"]: f for f in result.fits}
    assert set(fits) == MCUS and all(f["fits"] is (not f["reasons"]) for f in fits.values())
    assert fits["cortex-m4"]["fits"]


def test_a_model_too_big_for_the_flash_says_by_how_much(fitted, tmp_path):
    from pathlib import Path

    text = (Path(edgeship.__file__).parent / "targets" / "profile_data" / "cortex-m4.toml").read_text()
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(text.replace('id = "cortex-m4"', 'id = "tiny"').replace("storage_mb = 0.5", "storage_mb = 0.0078125"))
    model = to_c(fitted["forest"])
    fit = classic_fit(model, load_profile(str(tiny)))
    need = fit["flash_bytes"]
    assert not fit["fits"] and f"exceeds 8.0 KiB by {(need - 8192) / 1024:,.1f} KiB" in fit["reasons"][0]


def test_emlearn_leaves_numpys_error_state_and_the_working_directory_alone(fitted, tmp_path, monkeypatch):
    """emlearn sets numpy to raise on every floating-point error, and compiles a check program
    into ./tmp of the working directory; neither side effect reaches the user."""
    monkeypatch.chdir(tmp_path)
    before = np.geterr()
    to_c(fitted["forest"])
    to_c(fitted["mlp"])
    assert np.geterr() == before and list(tmp_path.iterdir()) == []


def test_export_cli_takes_a_model_function_and_refuses_what_emlearn_cannot_convert(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent("""
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.svm import SVC
        from sklearn.tree import DecisionTreeClassifier

        def tree():
            d = load_digits()
            x = (d.data / 16).astype(np.float32)
            return DecisionTreeClassifier(max_depth=6, random_state=0).fit(x[:1200], d.target[:1200]), x[1200:], d.target[1200:]

        def svm():
            d = load_digits()
            return SVC().fit(d.data[:200], d.target[:200])
    """))
    ok = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", f"{tmp_path / 'models.py'}:tree", "--out",
                         str(tmp_path / "fw"), "--name", "tree"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "accuracy: compiled C" in ok.stdout and (tmp_path / "fw" / "tree.h").is_file()
    bad = subprocess.run([sys.executable, "-m", "edgeship.cli", "export", f"{tmp_path / 'models.py'}:svm", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "SVC is not converted to C" in bad.stderr and not (tmp_path / "bad").exists()
    assert len(bad.stderr.strip().splitlines()) == 1
