#!/usr/bin/env bash
# Four production trials capped at 0.075 of an 80 GB card each (6 GB: a 24 GB card's quarter).
set -uo pipefail
site=/tmp/site; bash .whl/install.sh .whl $site >/dev/null 2>&1
export PYTHONPATH=$site:$PWD RAY_AUTH_MODE=token PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
sed -e 's/^name: pnl_cost/name: gpu_cap/' -e 's/^  iterations: 50/  iterations: 3/' \
  -e 's/^scheduler: .*/scheduler: {grace_period: 3, reduction_factor: 3}/' \
  -e 's/gpus_per_trial: 0.25/gpus_per_trial: 0.075/' search_spaces/pnl_cost.yaml > /tmp/cap.yaml
echo "preflight: {enabled: false}" >> /tmp/cap.yaml
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -l 1 > $OUT/smi.csv 2>/dev/null & smi=$!
timeout 150 python3 -m himari_ray search /tmp/cap.yaml --trials 4 --out /tmp/capout 2>&1 | grep -E "^ +[0-9]+ |error|Error" | head -8
kill $smi
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob("/tmp/capout/tune/*/result.json")):
    r=[json.loads(l) for l in open(f) if l.strip()][-1]
    print(os.path.basename(os.path.dirname(f)), "it", r["training_iteration"], "env/s %.0f" % r["env_steps_per_s"], "alloc %.2f GB" % r["gpu_peak_mem_gb"], "reserved %.2f GB" % r["gpu_reserved_gb"])
m=[float(x) for x in open(os.environ["OUT"]+"/smi.csv") if x.strip()]
print("nvidia-smi memory used max %.0f MiB over %d samples" % (max(m), len(m)))
PY
