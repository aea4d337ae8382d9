#!/usr/bin/env python3
"""Rebuild a lowbit model file as a PyTorch module from the file alone (h5py + torch, no lowbit).

    python3 scripts/lowbit_to_torch.py MODEL.h5                      # print the module
    python3 scripts/lowbit_to_torch.py MODEL.h5 --fmnist-dir DIR     # and its Fashion-MNIST test accuracy
    python3 scripts/lowbit_to_torch.py MODEL.h5 --save out.pt        # torch.save the rebuilt module's state_dict

Follows docs/checkpoint-format.md step by step: the model is the one the file's `config`
attribute describes (model.type = "mlp": Sequential of Linear, activation, [Dropout], ...,
Linear, indexed as lowbit's Sequential is); float tensors load as they are; a quantized linear
("intx_affine" group) is dequantized -- codes unpacked (two per byte, low nibble first, two's
complement for signed dtypes), minus the zero point, times the scale of its block -- and, when
its `activation` attribute names a dynamic int8 per-token config, its input is quantized and
dequantized per token (asymmetric) before the matmul, as lowbit and torchao do. Inputs are
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


def dequantize_intx(group):
    """Float32 weight of a quantized linear group (quant_scheme = "intx_affine")."""
    dtype = _attr_str(group, "dtype")
    out_f, in_f = _shape(_attr_str(group, "shape"))
    block = _shape(_attr_str(group, "block_size"))
    qdata = group["qdata"][()]
    if _attr_str(group, "packing") == "nibbles":
        if _attr_str(group, "nibble_order") != "low_first":
            raise ValueError(f"{group.name}: unknown nibble order")
        b = qdata.astype(np.int16)
        codes = np.empty((out_f, in_f), dtype=np.int16)
        codes[:, 0::2] = b & 0x0F          # element 2i: bits 0-3
        codes[:, 1::2] = (b >> 4) & 0x0F   # element 2i+1: bits 4-7
        if not dtype.startswith("u"):      # two's complement nibbles
            codes = np.where(codes >= 8, codes - 16, codes)
    else:
        codes = qdata.astype(np.int16).reshape(out_f, in_f)
    scale = group["scale"][()].astype(np.float32)
    zero_point = group["zero_point"][()].astype(np.int16) if "zero_point" in group else np.zeros_like(scale, dtype=np.int16)
    # each scale covers a block of block[0] x block[1] weights
    scale = np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)
    zero_point = np.repeat(np.repeat(zero_point, block[0], axis=0), block[1], axis=1)
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


def activation_quantizer(text):
    """The input fake quantizer a quantized linear's `activation` attribute describes."""
    if text in ("none", "None", ""):
        return None
    if "PerToken" not in text or "torch.int8" not in text or "ASYMMETRIC" not in text or "is_dynamic=True" not in text:
        raise ValueError(f"unsupported activation quantization: {text}")
    m = re.search(r"eps=([^,)]+)", text)
    eps = None if not m or m.group(1) == "None" else float(m.group(1))
    return PerTokenInt8(-128, 127, eps)


def rebuild(path):
    with h5py.File(path, "r") as f:
        if _attr_str(f, "format", "") != "lowbit-checkpoint":
            raise ValueError(f"{path}: not a lowbit file")
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
                layers.append(DequantizedLinear(dequantize_intx(g), bias, activation_quantizer(_attr_str(g, "activation", "none"))))
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
