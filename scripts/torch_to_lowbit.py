#!/usr/bin/env python3
"""Write a PyTorch state_dict (or any dict of arrays) as a lowbit HDF5 model file.

    python3 scripts/torch_to_lowbit.py model.pt out.h5 --config run.toml   # torch.save'd state_dict (needs torch)
    python3 scripts/torch_to_lowbit.py arrays.npz out.h5 --config run.toml # numpy arrays, no torch needed

or, from Python:

    from torch_to_lowbit import write_state_dict
    write_state_dict("out.h5", model.state_dict(), config=open("run.toml").read())

--config / config=: a lowbit run config (TOML, e.g. `lowbit train configs/fmnist_mlp.toml
--model.hidden "[256]" --print-config > run.toml`) describing the model the tensors belong to.
It is stored in the file's `config` attribute; `lowbit eval` and `lowbit convert` rebuild the
model from it and refuse a file without one. `lowbit::io::load_checkpoint` into a model you
build yourself does not need it.

Tensors go to /model/<name with '.' replaced by '/'> with a "dtype" attribute; bfloat16 is
stored as its uint16 bits. The root attributes make the file a schema-1 lowbit "model" file
(see docs/checkpoint-format.md), so `lowbit::io::load_checkpoint` and `lowbit inspect` read it.
Only h5py and numpy are required unless the input holds torch tensors.
"""
import sys

import h5py
import numpy as np

_DTYPES = {
    np.dtype("float32"): "float32", np.dtype("float64"): "float64", np.dtype("int8"): "int8",
    np.dtype("uint8"): "uint8", np.dtype("int32"): "int32", np.dtype("int64"): "int64", np.dtype("bool"): "bool",
}


def _to_numpy(value):
    """Returns (array, lowbit dtype name)."""
    if hasattr(value, "detach"):  # a torch.Tensor
        import torch
        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
        value = t.numpy()
    arr = np.asarray(value)  # np.ascontiguousarray would turn a 0-dim tensor into shape (1,)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {arr.dtype}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8), "bool"
    return arr, _DTYPES[arr.dtype]


def write_state_dict(path, state_dict, config=""):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "lowbit-checkpoint"
        f.attrs["schema_version"] = np.int64(1)
        f.attrs["kind"] = "model"
        f.attrs["lowbit_version"] = "written by torch_to_lowbit.py"
        f.attrs["config"] = config
        model = f.create_group("model")
        for name, value in state_dict.items():
            arr, dtype = _to_numpy(value)
            kwargs = {"fletcher32": True, "chunks": True} if arr.ndim > 0 and arr.size > 0 else {}
            ds = model.create_dataset(name.replace(".", "/"), data=arr, **kwargs)
            ds.attrs["dtype"] = dtype


def main(argv):
    import argparse
    import tomllib

    ap = argparse.ArgumentParser(description="Write a PyTorch state_dict (.pt) or numpy arrays (.npz) as a lowbit model file.")
    ap.add_argument("input", help="state_dict saved with torch.save (.pt), or a .npz of arrays named like the state_dict")
    ap.add_argument("output", help="lowbit model file (.h5)")
    ap.add_argument("--config", help="lowbit run config (TOML) describing the model; needed by lowbit eval / convert")
    a = ap.parse_args(argv)
    config = ""
    if a.config:
        with open(a.config, "rb") as f:
            raw = f.read()
        tomllib.loads(raw.decode())  # a syntax error fails here, not in lowbit later
        config = raw.decode()
    else:
        print("torch_to_lowbit: no --config given: lowbit::io::load_checkpoint reads the file, but lowbit eval and "
              "lowbit convert need the run config that describes the model", file=sys.stderr)
    if a.input.endswith(".npz"):
        with np.load(a.input) as z:
            state = {k: z[k] for k in z.files}
    else:
        import torch
        state = torch.load(a.input, map_location="cpu")
    write_state_dict(a.output, state, config=config)


if __name__ == "__main__":
    main(sys.argv[1:])
