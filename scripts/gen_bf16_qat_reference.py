#!/usr/bin/env python3
"""Reference values for lowbit's bfloat16 affine primitives, computed by PyTorch.

torchao is not installable offline, so this replays torchao's op sequences (spec §1.3-1.4:
choose_qparams_affine in x's dtype, quantize x * (1/scale) -> round (identity backward) -> + zp ->
clamp, dequantize (q.to(dt) - zp.to(dt)) * scale -> .to(dt)) with real torch bf16/fp32 tensors, so
torch's own bf16 rounding and type promotion (and autograd for the gradient) produce the numbers.
Writes tests/qat/data/bf16_affine.json (bit patterns). Run with PyTorch >= 2.0:
    python3 scripts/gen_bf16_qat_reference.py OUT.json
"""
import json
import sys

import torch


class RoundSTE(torch.autograd.Function):  # torchao's _Round
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def choose(x, mapping, group, qmin, qmax, eps, scale_dtype):
    xb = x.reshape(x.shape[0], -1, group)
    mn = torch.amin(xb, dim=-1, keepdim=True)
    mx = torch.amax(xb, dim=-1, keepdim=True)
    min_neg = torch.min(mn, torch.zeros_like(mn))
    max_pos = torch.max(mx, torch.zeros_like(mx))
    if mapping == "SYMMETRIC":
        max_pos = torch.max(-min_neg, max_pos)
        scale = max_pos / (float(qmax - qmin) / 2)
        zp = torch.full_like(scale, int((qmax + qmin + 1) / 2))
        scale = torch.clamp(scale, min=eps)
    else:
        scale = (max_pos - min_neg) / float(qmax - qmin)
        scale = torch.clamp(scale, min=eps)
        zp = qmin - torch.round(min_neg / scale)
        zp = torch.clamp(zp, qmin, qmax)
    return scale.to(scale_dtype), zp.to(torch.int32)


def fake_quant(x, scale, zp, group, qmin, qmax):
    xb = x.reshape(x.shape[0], -1, group)
    q = RoundSTE.apply(xb * (1.0 / scale))
    q = torch.clamp(q + zp, qmin, qmax)
    y = (q.to(x.dtype) - zp.to(x.dtype)) * scale
    return y.to(x.dtype).reshape(x.shape)


def bits(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).flatten().tolist()
    return t.to(torch.float32).view(torch.int32).flatten().tolist()


def main(out):
    torch.manual_seed(0)
    cases = []
    for x_dtype in (torch.bfloat16, torch.float32):
        for mapping, qmin, qmax in (("SYMMETRIC", -8, 7), ("ASYMMETRIC", -128, 127), ("SYMMETRIC", -128, 127)):
            for group in (32, 64):
                for scale_dtype in (torch.bfloat16, torch.float32):
                    if x_dtype == torch.float32 and scale_dtype == torch.float32:
                        continue  # covered by affine.h5
                    x = (torch.randn(6, 128) * 3).to(x_dtype)
                    x[0, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 7.5, -7.5, 0.0])  # ties
                    x[1, :group] = 0.0  # an all-zero block
                    x.requires_grad_(True)
                    scale, zp = choose(x.detach(), mapping, group, qmin, qmax, torch.finfo(torch.float32).tiny, scale_dtype)
                    y = fake_quant(x, scale, zp, group, qmin, qmax)
                    g = torch.randn(6, 128).to(x_dtype)
                    y.backward(g)
                    cases.append({
                        "x_dtype": str(x_dtype).replace("torch.", ""), "scale_dtype": str(scale_dtype).replace("torch.", ""),
                        "mapping": mapping, "quant_min": qmin, "quant_max": qmax, "group": group, "shape": list(x.shape),
                        "x": bits(x), "scale": bits(scale), "zero_point": zp.flatten().tolist(), "fq": bits(y), "grad_output": bits(g),
                        "grad_input": bits(x.grad),
                    })
    with open(out, "w") as f:
        json.dump({"generator": "scripts/gen_bf16_qat_reference.py", "torch": torch.__version__, "cases": cases}, f)
    print(f"{len(cases)} cases -> {out} (torch {torch.__version__})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bf16_affine.json")
