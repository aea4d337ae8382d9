#!/usr/bin/env python3
"""scripts/lowbit_to_torch.py against lowbit itself: a float and a QAT-converted (8da4w) model
file, rebuilt in PyTorch from the file alone, must reach lowbit eval's test accuracy.

    lowbit_to_torch_check.py LOWBIT_EXE WORK_DIR [MODEL.h5 ...]

Exit 77 (ctest: skipped, with the reason printed) when torch, h5py or Fashion-MNIST is missing.
With model files given, they are checked instead of training new ones (used on machines that
have torch but cannot build lowbit).
"""
import os
import re
import subprocess
import sys

SKIP = 77
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "scripts"))
try:
    import torch  # noqa: F401
    import h5py  # noqa: F401
except ImportError as e:
    print(f"SKIPPED: {e} (install python3-torch and python3-h5py to run this test)")
    sys.exit(SKIP)
import lowbit_to_torch as l2t

fmnist = os.environ.get("LOWBIT_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
if not os.path.exists(os.path.join(fmnist, "t10k-images-idx3-ubyte.gz")):
    print(f"SKIPPED: Fashion-MNIST not found in {fmnist}")
    sys.exit(SKIP)

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
files = sys.argv[3:]
lowbit_acc = {}
if not files:
    src = os.path.join(here, "..", "..", "configs")
    for name, config, extra in [("float", "fmnist_mlp.toml", []),
                                ("qat", "fmnist_qat.toml", ["--quantize.qat_epochs", "1"])]:
        run = os.path.join(work, name)
        subprocess.run([exe, "train", os.path.join(src, config), "--model.hidden", "[64]", "--training.epochs", "1",
                        "--training.max_steps", "60", "--checkpoint.enabled", "false", "--training.run_dir", run, "--overwrite"]
                       + extra, check=True, stdout=subprocess.DEVNULL)
        files.append(os.path.join(run, "model.h5"))
failures = 0
for path in files:
    if os.path.exists(exe):
        out = subprocess.run([exe, "eval", path], check=True, capture_output=True, text=True).stdout
        ours = float(re.search(r"test accuracy ([0-9.]+)%", out).group(1))
    else:
        ours = None
    model = l2t.rebuild(path)
    theirs = 100 * l2t.fmnist_accuracy(model, fmnist)
    quantized = any(isinstance(m, l2t.DequantizedLinear) for m in model.modules())
    print(f"{path}: lowbit {ours}%, PyTorch rebuild {theirs:.2f}% ({'quantized' if quantized else 'float'})")
    # the same arithmetic up to GEMM summation order: at most a couple of the 10000 predictions flip
    if ours is not None and abs(ours - theirs) > 0.05:
        print("  MISMATCH")
        failures += 1
sys.exit(1 if failures else 0)
