#!/bin/bash
# round 25, first call: the five GPU test files on the working tree (1fa4c34's cached merge launch, never GPU-run,
# and the scatter decoder without its dense tile where values go into the P·V operand), then the A/B of the freed
# shared memory: base (ba612d4, build/base) against the tree at its default plan, a third ring side, and register
# caps of 144 and 128 (14 and 16 programs per SM where 168 allows 12)
export PYTHONPATH=$PWD
timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider tests/kernels/test_gpu_scatter.py tests/kernels/test_gpu_fp8.py \
  tests/kernels/test_gpu_word.py tests/kernels/test_gpu_graphs.py tests/kernels/test_gpu.py > $OUT/tests.txt 2>&1
tail -n 3 $OUT/tests.txt
ab() { timeout 90 python3 results/kernels/scatter_h200/run14/ab/ab4.py "$@" >> $OUT/ab.jsonl 2>>$OUT/ab_err.txt; }
ab build/base base
ab . tile
ab . tile_s3 168 3
ab . tile_r144 144 2
ab . tile_r128 128 2
ab build/base base2
python3 - <<'PY'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/ab.jsonl")]
for r in rows: print(r["tag"].ljust(10), r["rule"].ljust(18), r["b"], r["t"], r["dense"], r["us"], r["x"], r["err"], r["occ"])
PY
tail -n 5 $OUT/ab_err.txt
