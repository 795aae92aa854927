"""The same numbers on one device and on four (virtual CPU devices, examples sharded over a mesh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import SPEC, TESTS, cpu_devices_env

SCRIPT = """
import sys
import numpy as np
import jax
sys.path.insert(0, {tests!r})
from reportgen import api
model = api.load_model({spec!r}, {checkpoint!r})
x = np.random.default_rng(0).uniform(0, 1, (10, 8, 8, 3)).astype(np.float32)
np.savez({out!r}, devices=len(jax.devices()), logits=api.predict(model, x, chunk=4),
         saliency=api.saliency(model, x, chunk=4), ig=api.integrated_gradients(model, x, steps=8, chunk=4),
         cam=api.grad_cam(model, x, layer="conv1", chunk=4))
"""


def run(devices: int, checkpoint: Path, out: Path) -> dict[str, np.ndarray]:
    env = cpu_devices_env(devices)
    code = SCRIPT.format(tests=str(TESTS), spec=f"{SPEC}:TinyLinen", checkpoint=str(checkpoint), out=str(out))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def test_one_and_four_devices_agree(linen_checkpoint: Path, tmp_path: Path) -> None:
    one = run(1, linen_checkpoint, tmp_path / "one.npz")
    four = run(4, linen_checkpoint, tmp_path / "four.npz")
    assert (int(one.pop("devices")), int(four.pop("devices"))) == (1, 4)
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
