#!/usr/bin/env python3
"""lowbit <-> h5py in both directions, without lowbit on the Python side.

usage: h5py_interop.py INTEROP_TOOL WORKDIR   (exit 77 = skipped: h5py not installed)
"""
import os
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError:
    print("h5py/numpy not installed: skipping")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from torch_to_lowbit import write_state_dict  # noqa: E402

tool, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
NAMES = [("0.weight", (3, 4)), ("0.bias", (3,)), ("2.weight", (2, 3)), ("2.bias", (2,))]


def expected(k, shape):
    n = int(np.prod(shape))
    return (0.25 * np.arange(n, dtype=np.float64) - k).astype(np.float32).reshape(shape)


# 1. lowbit writes, h5py reads: names follow the dotted names, shapes and values exact
out = os.path.join(work, "from_lowbit.h5")
subprocess.run([tool, "write", out], check=True)
with h5py.File(out, "r") as f:
    assert f.attrs["format"] == "lowbit-checkpoint", f.attrs["format"]
    assert int(f.attrs["schema_version"]) == 2
    assert f.attrs["kind"] == "model"
    for k, (name, shape) in enumerate(NAMES):
        ds = f["model/" + name.replace(".", "/")]
        assert ds.shape == shape, (name, ds.shape)
        assert ds.dtype == np.float32 and ds.attrs["dtype"] == "float32"
        assert ds.fletcher32
        assert np.array_equal(ds[()], expected(k, shape)), name
print("h5py read the lowbit file: names, shapes, values ok")

# 2. h5py writes a PyTorch-named state_dict, lowbit loads it into the matching model
inp = os.path.join(work, "from_h5py.h5")
write_state_dict(inp, {name: expected(k, shape) for k, (name, shape) in enumerate(NAMES)})
subprocess.run([tool, "read", inp], check=True)
print("lowbit loaded the h5py file")

# 3. the command line: a .npz with a 0-dim tensor and --config; the config is stored verbatim and
#    the 0-dim tensor keeps its shape ()
npz, cfg, out3 = os.path.join(work, "state.npz"), os.path.join(work, "run.toml"), os.path.join(work, "from_cli.h5")
np.savez(npz, **{"0.weight": expected(0, (3, 4)), "scale": np.float32(0.5)})
with open(cfg, "w") as f:
    f.write('[model]\ntype = "mlp"\nhidden = [3]\n')
script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "torch_to_lowbit.py")
subprocess.run([sys.executable, script, npz, out3, "--config", cfg], check=True)
with h5py.File(out3, "r") as f:
    assert f.attrs["config"] == '[model]\ntype = "mlp"\nhidden = [3]\n', f.attrs["config"]
    assert f["model/scale"].shape == (), f["model/scale"].shape
    assert f["model/scale"][()] == np.float32(0.5)
    assert f["model/0/weight"].shape == (3, 4)
print("torch_to_lowbit.py CLI: config stored, 0-dim tensor kept as a scalar")
