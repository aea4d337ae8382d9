#!/usr/bin/env python3
"""Rebuild a lowbit model file as a PyTorch module from the file alone (h5py + torch, no lowbit).

    python3 scripts/lowbit_to_torch.py MODEL.h5                      # print the module
    python3 scripts/lowbit_to_torch.py MODEL.h5 --fmnist-dir DIR     # and its Fashion-MNIST test accuracy
    python3 scripts/lowbit_to_torch.py MODEL.h5 --save out.pt        # torch.save the rebuilt module's state_dict

Follows docs/checkpoint-format.md step by step: the model is the module tree the file's groups
describe (`module_type`, `module_index` and each module's attributes), or, in files written
before lowbit stored module types, the one the file's `config` attribute describes
(model.type = "mlp"); float tensors load as they are; a quantized linear ("intx_affine" group)
is dequantized -- codes unpacked (each row two per byte, low nibble first, two's complement for
signed formats), minus the zero point, times the scale of its block (a row's last block may be
shorter) -- and, when its `activation_*` attributes describe a dynamic int8 per-token config,
its input is quantized and dequantized per token (asymmetric) before the matmul, as lowbit and
torchao do. Inputs are
Fashion-MNIST images normalized as (pixel / 255 - 0.2860) / 0.3530.
"""
import argparse
import gzip
import os
import re
import sys
import tomllib

import h5py
import numpy as np
import torch
import torch.nn.functional as F

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def _attr_str(obj, name, default=None):
    if name not in obj.attrs:
        if default is None:
            raise ValueError(f"{obj.name}: missing attribute '{name}'")
        return default
    v = obj.attrs[name]
    return v.decode() if isinstance(v, bytes) else str(v)


def _shape(text):
    return [int(x) for x in re.findall(r"\d+", text)]


def _ints(obj, name):
    v = obj.attrs[name]
    return [int(x) for x in np.atleast_1d(v)]


def dequantize_intx(group):
    """Float32 weight of a quantized linear group (quant_scheme = "intx_affine")."""
    fmt = _attr_str(group, "weight_format")
    out_f, in_f = _ints(group, "shape")
    block = _ints(group, "block_size")
    qdata = group["qdata"][()]
    if _attr_str(group, "packing") == "nibbles":
        if _attr_str(group, "nibble_order") != "low_first":
            raise ValueError(f"{group.name}: unknown nibble order")
        b = qdata.astype(np.int16)                      # (out, ceil(in / 2)): each row packed on its own
        codes = np.empty((out_f, 2 * b.shape[1]), dtype=np.int16)
        codes[:, 0::2] = b & 0x0F                       # element 2i: bits 0-3
        codes[:, 1::2] = (b >> 4) & 0x0F                # element 2i+1: bits 4-7
        codes = codes[:, :in_f]
        if fmt.startswith("int"):                       # signed formats: two's complement nibbles
            codes = np.where(codes >= 8, codes - 16, codes)
    else:
        codes = qdata.astype(np.int16).reshape(out_f, in_f)
    scale = group["scale"][()].astype(np.float32)
    zero_point = group["zero_point"][()].astype(np.int16) if "zero_point" in group else np.zeros_like(scale, dtype=np.int16)
    # each scale covers a block of block[0] x block[1] weights; a last block may be shorter
    scale = np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)[:out_f, :in_f]
    zero_point = np.repeat(np.repeat(zero_point, block[0], axis=0), block[1], axis=1)[:out_f, :in_f]
    return torch.from_numpy(((codes - zero_point).astype(np.float32) * scale).astype(np.float32))


class PerTokenInt8(torch.nn.Module):
    """Dynamic per-token asymmetric fake quantization (torchao's choose_qparams_affine ASYMMETRIC
    + quantize/dequantize_affine, INT zero-point domain), computed in float32."""

    def __init__(self, qmin=-128, qmax=127, eps=None):
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        self.eps = torch.finfo(torch.float32).tiny if eps is None else eps

    def forward(self, x):
        min_neg = torch.clamp(x.amin(dim=-1, keepdim=True), max=0)
        max_pos = torch.clamp(x.amax(dim=-1, keepdim=True), min=0)
        scale = torch.clamp((max_pos - min_neg) / float(self.qmax - self.qmin), min=self.eps)
        zp = torch.clamp(self.qmin - torch.round(min_neg / scale), self.qmin, self.qmax)
        q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, self.qmin, self.qmax)
        return (q - zp) * scale

    def extra_repr(self):
        return f"qmin={self.qmin}, qmax={self.qmax}, eps={self.eps}"


class DequantizedLinear(torch.nn.Module):
    def __init__(self, weight, bias, act_quant):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.act_quant = act_quant

    def forward(self, x):
        if self.act_quant is not None:
            x = self.act_quant(x)
        return F.linear(x, self.weight, self.bias)


def activation_quantizer(group):
    """The input fake quantizer a quantized linear's activation_* attributes describe."""
    if "activation_dtype" not in group.attrs:
        return None
    dtype = _attr_str(group, "activation_dtype")
    gran = _attr_str(group, "activation_granularity")
    mapping = _attr_str(group, "activation_mapping_type")
    dynamic = int(group.attrs["activation_is_dynamic"])
    if dtype != "int8" or gran != "per_token" or mapping != "ASYMMETRIC" or not dynamic:
        raise ValueError(f"{group.name}: unsupported activation quantization {dtype} {gran} {mapping}")
    eps = float(group.attrs["activation_eps"]) if "activation_eps" in group.attrs else None
    return PerTokenInt8(-128, 127, eps)


ACTIVATIONS = {"ReLU": torch.nn.ReLU, "SiLU": torch.nn.SiLU, "Tanh": torch.nn.Tanh}


def build_module(g):
    """A torch module from a lowbit module group (module_type and its attributes), recursively."""
    t = _attr_str(g, "module_type")
    if t in ("Sequential", "ModuleList"):
        kids = sorted((int(c.attrs["module_index"]), name) for name, c in g.items()
                      if isinstance(c, h5py.Group) and "module_type" in c.attrs)
        mods = [build_module(g[name]) for _, name in kids]
        return torch.nn.Sequential(*mods) if t == "Sequential" else torch.nn.ModuleList(mods)
    if t == "Linear":
        w = torch.from_numpy(g["weight"][()])
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias="bias" in g)
        with torch.no_grad():
            lin.weight.copy_(w)
            if "bias" in g:
                lin.bias.copy_(torch.from_numpy(g["bias"][()]))
        return lin
    if t == "QuantizedLinear":
        if _attr_str(g, "quant_scheme") != "intx_affine":
            raise ValueError(f"{g.name}: unknown quant_scheme")
        bias = torch.from_numpy(g["bias"][()]) if "bias" in g else None
        return DequantizedLinear(dequantize_intx(g), bias, activation_quantizer(g))
    if t in ACTIVATIONS:
        return ACTIVATIONS[t]()
    if t == "GELU":
        return torch.nn.GELU(approximate=_attr_str(g, "approximate"))
    if t == "Dropout":
        return torch.nn.Dropout(float(g.attrs["p"]))
    if t == "LayerNorm":
        shape = _ints(g, "normalized_shape")
        ln = torch.nn.LayerNorm(shape, eps=float(g.attrs["eps"]), elementwise_affine="weight" in g, bias="bias" in g)
        with torch.no_grad():
            if "weight" in g:
                ln.weight.copy_(torch.from_numpy(g["weight"][()]))
            if "bias" in g:
                ln.bias.copy_(torch.from_numpy(g["bias"][()]))
        return ln
    raise ValueError(f"{g.name}: module type {t} is not rebuilt by this script")


def rebuild(path):
    with h5py.File(path, "r") as f:
        if _attr_str(f, "format", "") != "lowbit-checkpoint":
            raise ValueError(f"{path}: not a lowbit file")
        if "module_type" in f["model"].attrs:          # the file describes its modules
            return build_module(f["model"]).eval()
        cfg = tomllib.loads(_attr_str(f, "config", ""))
        model_cfg = cfg.get("model", {})
        if model_cfg.get("type", "mlp") != "mlp":
            raise ValueError(f"{path}: only model.type = 'mlp' is rebuilt by this script")
        acts = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}
        act = acts[model_cfg.get("activation", "relu")]
        dropout = float(model_cfg.get("dropout", 0.0))
        widths = [int(model_cfg.get("input_dim", 784))] + [int(h) for h in model_cfg.get("hidden", [1024, 1024])] + [int(model_cfg.get("num_classes", 10))]
        model = f["model"]
        layers = []
        for i in range(len(widths) - 1):
            idx = str(len(layers))                       # lowbit's Sequential index of this Linear
            g = model[idx]
            bias = torch.from_numpy(g["bias"][()]) if "bias" in g else None
            if "quant_scheme" in g.attrs:
                if _attr_str(g, "quant_scheme") != "intx_affine":
                    raise ValueError(f"{g.name}: unknown quant_scheme")
                layers.append(DequantizedLinear(dequantize_intx(g), bias, activation_quantizer(g)))
            else:
                w = torch.from_numpy(g["weight"][()])
                lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if bias is not None:
                        lin.bias.copy_(bias)
                layers.append(lin)
            if i < len(widths) - 2:
                layers.append(act())
                if dropout > 0:
                    layers.append(torch.nn.Dropout(dropout))
        return torch.nn.Sequential(*layers).eval()


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_accuracy(model, directory):
    x = _idx(os.path.join(directory, "t10k-images-idx3-ubyte.gz")).reshape(-1, 784).astype(np.float32)
    y = _idx(os.path.join(directory, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    x = (x / np.float32(255) - np.float32(FMNIST_MEAN)) / np.float32(FMNIST_STD)
    correct = 0
    with torch.no_grad():
        for s in range(0, len(y), 1000):
            logits = model(torch.from_numpy(x[s:s + 1000]))
            correct += int((logits.argmax(dim=1).numpy() == y[s:s + 1000]).sum())
    return correct / len(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--fmnist-dir", help="Fashion-MNIST directory: report the test accuracy")
    ap.add_argument("--save", help="write the rebuilt module's state_dict with torch.save")
    a = ap.parse_args()
    model = rebuild(a.file)
    print(model)
    if a.fmnist_dir:
        print(f"test accuracy {100 * fmnist_accuracy(model, a.fmnist_dir):.2f}%")
    if a.save:
        torch.save(model.state_dict(), a.save)


if __name__ == "__main__":
    sys.exit(main())
