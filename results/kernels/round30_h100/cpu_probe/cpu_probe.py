"""Round 30: the public decode op's Python on the project machine (CPU, no GPU): every launch replaced by a no-op
(a fake compiled kernel and C launch function), the scatter decoder's configuration forced, B 1, 32 query / 8 KV
heads, D 128, 2,048 word tokens, s 0.7. µs per call for dynamic stores (the full path) and static stores (which
replay their launch plan), and the host speed calibration loop of host2/breakdown.py.

Usage (repository root): python results/kernels/round30_h100/cpu_probe/cpu_probe.py TREE
TREE: a tree holding mustafar/ (``.``, or a ``git archive REV mustafar`` copy for an older revision)."""
import statistics, sys, time, timeit
sys.path.insert(0, sys.argv[1])
import torch
from mustafar.formats import CompressedStore
from mustafar.kernels import decode, dispatch, launch, pack_into, sparse_decode_attention
from mustafar.pruning.keep import word_topk_mask

assert decode.__file__.startswith(str(__import__("pathlib").Path(sys.argv[1]).resolve())), decode.__file__


class _Kernel:
    function, packed_metadata = 0, (1, 1, 0)

    class run:  # noqa: N801 (Triton's launcher object: called, or its C function taken)
        launch = staticmethod(lambda *a: None)

        def __new__(cls, *a):
            return None


class _Cached(dict):  # every specialisation key finds the fake kernel
    def get(self, k, d=None):
        return _Kernel


class _Direct(dict):
    def get(self, k, d=None):
        return (lambda *a: None, (0, False, False, None, None, (1, 1, 0), None, None, None))


_init = launch.CompiledLaunch.__init__


def _fake_init(self, *a, **k):
    _init(self, *a, **k)
    self.kernels = _Cached()
    self.direct = _Direct()  # trees before round 30 have no direct launches and never read it


launch.CompiledLaunch.__init__ = _fake_init
launch.hooked = lambda: False
dispatch.resolve_backend = lambda backend, device, d: "triton"
dispatch.decoder_for = lambda q, k, v: "scatter"
decode._sm_count = lambda index: 132
B, HQ, HKV, D, T = 1, 32, 8, 128, 2048


def stores(static):
    out = []
    for _ in "kv":
        st = CompressedStore(B, HKV, D, torch.float16, "cpu", 38, capacity=T, static=static, word_quota=True)
        rows = torch.randn(B, HKV, T, D, dtype=torch.float16)
        pack_into(st, rows, word_topk_mask(rows.abs(), 38))
        out.append(st)
    return out


def host(fn, n=2000, rep=7):
    for _ in range(50):
        fn()
    times = []
    for _ in range(rep):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return round(statistics.median(times), 2)


q = torch.randn(B, HQ, D, dtype=torch.float16)
kw = torch.randn(B, HKV, 32, D, dtype=torch.float16)
vw = kw.clone()
for static in (False, True):
    k, v = stores(static)
    print(f"{'static' if static else 'dynamic'} stores: op Python µs/call",
          host(lambda: sparse_decode_attention(q, k, v, kw, vw, D**-0.5)))
x = q
print("python_calibration µs", round(timeit.timeit("for _ in range(100): x.shape; x.dtype; x.data_ptr()",
                                                     globals={"x": x}, number=2000) / 2000 * 1e6, 2))
