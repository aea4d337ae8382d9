#!/usr/bin/env python3
"""Write a PyTorch state_dict (or any dict of arrays) as a lowbit HDF5 model file.

    python3 scripts/torch_to_lowbit.py model.pt out.h5     # a torch.save'd state_dict (needs torch)

or, from Python:

    from torch_to_lowbit import write_state_dict
    write_state_dict("out.h5", model.state_dict())

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
    arr = np.ascontiguousarray(value)
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: torch_to_lowbit.py STATE_DICT.pt OUT.h5")
    import torch
    write_state_dict(sys.argv[2], torch.load(sys.argv[1], map_location="cpu"))
