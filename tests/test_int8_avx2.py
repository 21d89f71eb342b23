"""Static int8 on an x86 CPU without VNNI, emulated: QEMU's user mode runs this very Python and ONNX
Runtime on a Haswell CPU model (AVX2, no AVX-512, no VNNI), so the U8S8 saturation is real.

Needs ``qemu-x86_64`` (Debian's qemu-user; .ci/run installs it) on an x86_64 machine.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-x86_64") and platform.machine() == "x86_64"),
                                reason="needs qemu-x86_64 (apt-get install qemu-user) on x86_64")

EVAL = """
import sys, numpy as np
from edgeship.core.session import open_session
with np.load(sys.argv[1]) as a:
    x, y = a["image"], a["labels"]
for path in sys.argv[2:]:
    s = open_session(path, threads=1)
    p = np.concatenate([s.run(None, {"image": x[i:i + 60]})[0] for i in range(0, len(x), 60)]).argmax(1)
    print(float((p == y).mean()))
"""


def _accuracies_on_haswell(eval_npz, models) -> list[float]:
    proc = subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", EVAL, str(eval_npz),
                           *map(str, models)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [float(line) for line in proc.stdout.split()]


def test_static_int8_for_an_avx2_target_keeps_its_accuracy_on_avx2(tmp_path):
    from edgeship._workspace import scratch_dir
    from edgeship.demo import prepare_demo
    from edgeship.passes import PassContext
    from edgeship.passes.quantize import QuantizeStatic
    from edgeship.search.pipeline import plan_optimization

    model, calib, evald, _ = prepare_demo("digits", scratch_dir("avx2"))
    built = {}
    for target in ("x86-gateway", "raspberry-pi-5"):  # AVX2 only: 7-bit weights; Arm: full range
        plan = plan_optimization(model, calib, evald, recipes="static-int8-minmax", target=target, executor="local")
        (recipe,) = plan.recipes
        assert next(s for s in recipe.steps if isinstance(s, QuantizeStatic)).reduce_range is (target == "x86-gateway")
        (tmp_path / target).mkdir()
        built[target] = recipe.apply(model, PassContext(tmp_path / target, plan.calibration)).path
    fp32, for_avx2, full_range = _accuracies_on_haswell(evald, [model.path, built["x86-gateway"],
                                                                 built["raspberry-pi-5"]])
    assert fp32 > 0.95
    assert for_avx2 >= fp32 - 0.01  # chosen for this CPU: within 1 point of float
    # the full-range model saturates here (0.57 in a run on 2026-12-01): proof that the emulated CPU
    # really lacks VNNI, so the line above tests what it claims
    assert full_range < fp32 - 0.05
