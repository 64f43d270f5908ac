"""Host time of the decode-step top-k pack into static 4:8 stores (B 8, 8 KV heads, D 128, one token), with and
without a per-head order, fp16 and fp8 values: 500 eager calls after 20 warm-up calls; then a cProfile listing of
200 calls of the ordered fp8 case. GPU only.
python3 results/decode/round23_h200/pack_host.py  (-> pack_host.txt; the same probe as round 22's, after the packs moved to cached compiled launches)"""

import cProfile
import pstats
import time

import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import topk_pack_into
from mustafar.pruning.keep import balanced_groups

B, H, D = 8, 8, 128
for order in (False, True):
    for fp8 in (False, True):
        st = CompressedStore(
            B, H, D, torch.float16, "cuda", 64, capacity=4096, static=True, word_quota=True, nm_group=8,
            value_dtype="fp8" if fp8 else "native",
        )  # fmt: skip
        if order:
            st.set_head_order(balanced_groups(torch.rand(B, H, D, device="cuda"), 8))
        row = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
        for _ in range(20):
            topk_pack_into(st, row, 64)
        torch.cuda.synchronize()
        st.reset()
        t = time.perf_counter()
        for _ in range(500):
            topk_pack_into(st, row, 64)
        host = (time.perf_counter() - t) / 500 * 1e6
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 500 * 1e6
        print(f"order={order} fp8={fp8}: host {host:.1f} us/call, wall {wall:.1f} us/call", flush=True)
        if order and fp8:
            st.reset()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                topk_pack_into(st, row, 64)
            profiler.disable()
            torch.cuda.synchronize()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)
