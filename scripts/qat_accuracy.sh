#!/usr/bin/env bash
# Accuracy report of docs/PERFORMANCE.md: Fashion-MNIST MLP, float32 vs PTQ vs QAT -> converted,
# for each recipe below, seeds 0 1 2 (mean and per-seed figures), with the converted model bytes.
#   scripts/qat_accuracy.sh [build dir (default build)] [out dir (default runs/qat_accuracy)]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
out="${2:-$root/runs/qat_accuracy}"
mkdir -p "$out"
# recipe weight_dtype group_size (0 = per-channel)
configs=("8da4w int4 32" "8da-intx int3 16" "8da-intx int2 16" "8da-intx int2 0")
# per seed: one float32 run (PTQ starts from its model), then one QAT run per recipe (each
# repeats the same float32 phase: same config, same seed, so the same float32 accuracy)
for seed in 0 1 2; do
  fdir="$out/float_s${seed}"
  [ -f "$fdir/model.h5" ] || "$build/lowbit" train "$root/configs/fmnist_mlp.toml" --training.seed "$seed" --training.run_dir "$fdir" --overwrite >"$fdir.log" 2>&1
  for c in "${configs[@]}"; do
    read -r recipe dtype group <<<"$c"
    key="${recipe}_${dtype}_g${group}"
    "$build/lowbit" convert "$fdir/model.h5" "$out/${key}_ptq_s${seed}.h5" --recipe "$recipe" --weight-dtype "$dtype" --group-size "$group" \
      | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p' >"$out/${key}_ptq_s${seed}.acc"
    dir="$out/${key}_qat_s${seed}"
    [ -f "$dir/metrics.jsonl" ] && grep -q '"converted"' "$dir/metrics.jsonl" && continue
    "$build/lowbit" train "$root/configs/fmnist_qat.toml" --training.seed "$seed" --training.run_dir "$dir" --quantize.recipe "$recipe" \
      --quantize.weight_dtype "$dtype" --quantize.group_size "$group" --quantize.mode qat --overwrite >"$dir.log" 2>&1
    tail -n 2 "$dir.log" | head -n 1
  done
done
python3 - "$out" <<'EOF'
import json, sys, glob, os, statistics as st
out = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(out, "*_qat_s*", "metrics.jsonl")):
    key, _, seed = os.path.basename(os.path.dirname(path)).rsplit("_", 2)
    for line in open(path):
        r = json.loads(line)
        if r.get("phase") == "converted":
            d = rows.setdefault(key, {})
            d.setdefault("float", {})[seed] = r["float_accuracy"]
            d.setdefault("qat", {})[seed] = r["test_accuracy"]
            d["bytes"] = r.get("model_bytes")
    acc = os.path.join(out, f"{key}_ptq_{seed}.acc")
    if os.path.exists(acc) and open(acc).read().strip():
        rows[key].setdefault("ptq", {})[seed] = float(open(acc).read()) / 100
def fmt(m):
    v = [m[s] * 100 for s in sorted(m)]
    return f"{st.mean(v):.2f}% ({', '.join(f'{x:.2f}' for x in v)})"
print("| recipe / weights | float32 | PTQ -> converted | QAT -> converted | QAT - PTQ | model bytes |")
print("|---|---|---|---|---|---|")
for key in sorted(rows):
    d = rows[key]
    if not all(k in d for k in ("float", "ptq", "qat")):
        continue
    gain = st.mean(d["qat"].values()) * 100 - st.mean(d["ptq"].values()) * 100
    print(f"| {key} | {fmt(d['float'])} | {fmt(d['ptq'])} | {fmt(d['qat'])} | {gain:+.2f} | {d['bytes']} |")
EOF
