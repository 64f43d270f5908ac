#!/usr/bin/env bash
# The committed CPU reproduction (results/paper/): key_pruning, value_pruning, main_grid and compression_accuracy on
# the embedded SmolLM2-135M-Instruct, RULER at length 1024 with 5 samples per task, one sweep after another, then
# the tables. Jobs another sweep already finished (same job id = same model, policy, benchmark, seed) are copied,
# not rerun (python -m eval.report.reuse).
# Usage: nohup nice -n 10 bash experiments/reproduce_smollm2.sh > results/reproduce_smollm2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
OVERRIDES=(model=smollm2 benchmark=ruler benchmark.length=1024 benchmark.n=5 "${LOGGER:-logger=none}")
SWEEPS=(key_pruning value_pruning main_grid compression_accuracy)
done_sweeps=""
for exp in "${SWEEPS[@]}"; do
  echo "== $(date -u +%FT%TZ) start $exp"
  if [[ -n "$done_sweeps" ]]; then
    python -m eval.report.reuse "$exp" --from "${done_sweeps#,}" --results results "${OVERRIDES[@]}"
  fi
  python run.py -m +experiment="$exp" "${OVERRIDES[@]}" results_dir=results
  done_sweeps="$done_sweeps,$exp"
  echo "== $(date -u +%FT%TZ) done $exp"
done
python scripts/make_tables.py --results results --out results/paper "${SWEEPS[@]}" decode_speed
