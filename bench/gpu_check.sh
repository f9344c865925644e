#!/usr/bin/env bash
# One-GPU check of issue 11, for a machine with one CUDA GPU, Python 3.12 and CUDA PyTorch but no package
# index. Installs the offline bundle, runs the production benchmark (fp32, then bf16) and a 4-trial
# production search sharing the GPU, and prints the figures. Budget: under 6 minutes (each stage has its
# own timeout; a stage that runs out is reported and the next one still runs).
#
#   here (package access):  bash /work/shared/offline/bundle.sh "$PWD/.offline"  # ~42 MB; an absolute path (the script cd-s)
#   there:                  bash bench/gpu_check.sh [.offline] [OUT_DIR]     # OUT_DIR default: $OUT or /tmp
#
# Every figure also lands as JSON under OUT_DIR (bench_fp32.json, bench_bf16_compile.json, search_summary.json,
# nvidia_smi.csv) for bench/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.offline}
out=${2:-${OUT:-/tmp/himari_gpu_check}}
mkdir -p "$out"
work=$(mktemp -d)
site=$work/site
t0=$SECONDS
stage() { echo "== [$((SECONDS - t0)) s] $*"; }
# limited SECONDS CMD...: run with a time limit, drop warning lines, say how it ended.
limited() {
  local limit=$1; shift
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -i -e warn -e 'new api stack' -e 'migration guide'
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "-- stopped: exit $rc$([ "$rc" -eq 124 ] && echo " (ran past ${limit} s)")"
}

stage "install the offline bundle from $bundle"
if [ ! -x "$bundle/install.sh" ]; then
  echo "no offline bundle at $bundle: build it first with: bash /work/shared/offline/bundle.sh $bundle"
  exit 2
fi
bash "$bundle/install.sh" "$bundle" "$site" || { echo "bundle install failed"; exit 2; }
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=token RAY_DEDUP_LOGS=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1

# Fail in seconds, not minutes, when the machine lacks something the bundle assumed it has.
python3 - <<'EOF' || exit 3
import importlib, sys
mods = ["torch", "numpy", "pandas", "yaml", "pydantic", "gymnasium", "optuna", "ray", "ray.tune", "ray.rllib",
        "himari_ray.rl.fast_runner", "himari_ray.search.driver"]
missing = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:  # noqa: BLE001 (report every missing piece at once)
        missing.append(f"{m} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
if missing:
    sys.exit("missing: " + "; ".join(missing))
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU {torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
      f"{__import__('os').cpu_count()} CPUs")
EOF

stage "production benchmark, fp32: env, module, RLlib plain vs fast runner (himari and stock learner), pure-torch reference"
limited 100 python3 bench/bench_ppo.py --preset production --device cuda --data sample --iterations 2 \
  --threads "$(nproc)" --json "$out/bench_fp32.json"

# Until 2026-11-26 RLlib's learner compiled nothing (rl/learner.py); now the himari learner's warm-up
# iteration pays a real inductor compile of the production module (the stock learner still compiles nothing),
# hence 180 s here. The cProfile stage of runs 2-3 made room for it: `bench_ppo.py --profile` runs it by hand.
stage "production benchmark, bf16 autocast + torch.compile: module (bf16 vs fp32), fast runner, reference"
limited 180 python3 bench/bench_ppo.py --preset production --device cuda --data sample --iterations 2 \
  --threads "$(nproc)" --precision bf16 --compile --skip env plain --json "$out/bench_bf16_compile.json"

stage "4-trial production search sharing the GPU (pnl_cost, 3 iterations, preflight off)"
space=$work/gpu_check.yaml
sed -e 's/^name: pnl_cost/name: gpu_check/' -e 's/^  iterations: 50/  iterations: 3/' \
  -e 's/^scheduler: .*/scheduler: {grace_period: 3, reduction_factor: 3}/' search_spaces/pnl_cost.yaml > "$space"
echo "preflight: {enabled: false}" >> "$space"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
  > "$out/nvidia_smi.csv" 2>/dev/null &
smi=$!
limited 120 python3 -m himari_ray search "$space" --trials 4 --out "$work/search" | tail -25
kill "$smi" 2>/dev/null

stage "search figures"
python3 - "$work/search" "$out" <<'EOF'
import json, sys, pathlib
search, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
keys = ["env_steps_per_s", "learner_samples_per_s", "sample_s", "learn_s", "gpu_peak_mem_gb", "gpu_reserved_gb",
        "host_peak_rss_gb",
        "policy_loss", "entropy", "kl", "vf_explained_var"]
trials = {}
for f in sorted(search.glob("tune/*/result.json")):
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if rows:
        trials[f.parent.name] = {"iterations": len(rows), **{k: rows[-1].get(k) for k in keys}}
for name, r in trials.items():
    print(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
rates = [r["env_steps_per_s"] for r in trials.values() if isinstance(r["env_steps_per_s"], float)]
summary = {"trials": trials, "aggregate_env_steps_per_s_if_concurrent": sum(rates)}
smi = [l.split(", ") for l in (out / "nvidia_smi.csv").read_text().splitlines() if l.count(",") == 2]
if smi:
    util = [float(s[1]) for s in smi]
    summary["gpu_util_mean_pct"] = sum(util) / len(util)
    summary["gpu_mem_used_max_mib"] = max(float(s[2]) for s in smi)
    summary["gpu_util_busy_samples"] = f"{sum(u > 10 for u in util)}/{len(util)}"
print(f"{len(trials)} trials reported; sum of last per-trial env steps/s: {sum(rates):,.0f}; nvidia-smi: "
      f"util mean {summary.get('gpu_util_mean_pct', float('nan')):.0f}%, busy samples "
      f"{summary.get('gpu_util_busy_samples')}, memory used max {summary.get('gpu_mem_used_max_mib', float('nan')):.0f} MiB")
(out / "search_summary.json").write_text(json.dumps(summary, indent=2))
EOF
stage "done (figures and JSON in $out)"
rm -rf "$work"
