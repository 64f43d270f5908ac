"""Triton kernels (CPU interpreter) against the PyTorch references, and the references against plain attention."""

from __future__ import annotations

import math

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.kernels.dispatch import decoder_for
from mustafar.kernels.support import gluon_capable
from mustafar.pruning.keep import threshold_mask, topk_mask

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _case(b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep, seed):
    """Random q, K/V stores (k_keep/v_keep None -> variable layout, published rule at s = 0.6) and windows."""
    q = _randn(b, hkv * n_rep, d, dtype=dtype, seed=seed)
    stores = []
    for i, keep in enumerate((k_keep, v_keep)):
        rows = _randn(b, hkv, t, d, dtype=dtype, seed=seed + 1 + i)
        store = CompressedStore(b, hkv, d, dtype, "cpu", keep)
        if keep is None:
            pack_into(store, rows, threshold_mask(rows.abs(), 0.6), backend="torch")
        else:
            topk_pack_into(store, rows, keep, backend="torch")
        stores.append(store)
    kw = _randn(b, hkv, w, d, dtype=dtype, seed=seed + 3)
    vw = _randn(b, hkv, w, d, dtype=dtype, seed=seed + 4)
    return q, stores[0], stores[1], kw, vw


def _plain_attention(q, k_store, v_store, kw, vw, scale):
    """float64 softmax attention over the decompressed cache, GQA by repeat_interleave."""
    n_rep = q.shape[1] // k_store.heads
    keys = torch.cat([k_store.to_dense(), kw], dim=2).double().repeat_interleave(n_rep, dim=1)
    values = torch.cat([v_store.to_dense(), vw], dim=2).double().repeat_interleave(n_rep, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", q.double(), keys) * scale
    return torch.einsum("bht,bhtd->bhd", scores.softmax(-1), values)


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4}


@pytest.mark.parametrize(
    "b,hkv,n_rep,t,w,d,dtype,k_keep,v_keep",
    [
        (2, 2, 4, 70, 5, 128, torch.float16, 38, 38),
        (1, 2, 4, 100, 3, 128, torch.bfloat16, 64, None),
        (1, 1, 1, 40, 0, 64, torch.float16, None, 20),
        (1, 2, 2, 0, 7, 64, torch.bfloat16, 20, 20),
        (1, 1, 8, 33, 4, 64, torch.float32, 19, None),
    ],
)
def test_triton_decode_matches_reference(poison, b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep):
    """The public op on the Triton backend (the portable decoder in the interpreter), output buffer poisoned."""
    q, ks, vs, kw, vw = _case(b, hkv, n_rep, t, w, d, dtype, k_keep, v_keep, seed=t + w)
    scale = d**-0.5
    ref = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="torch")
    out = torch.full_like(q, math.nan)
    got = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend="triton", out=out)
    assert got is out and out.dtype == q.dtype and out.shape == q.shape
    assert not out.isnan().any()
    assert _rel(out, ref) <= TOL[dtype]


@pytest.mark.parametrize("splits", [1, 3, 9, None])
def test_triton_decode_split_counts(poison, splits):
    """The window rides on the last split: one split, uneven splits, more splits than tiles (empty programs) and
    the wave-model default all give the reference result (private launch: the split count is no public knob)."""
    from mustafar.kernels.decode import _launch

    q, ks, vs, kw, vw = _case(1, 2, 4, 70, 5, 64, torch.float16, 20, 20, seed=11)
    ref = sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="torch")
    out = _launch(q, ks, vs, kw, vw, 0.125, "portable", num_splits=splits, block_n=16)
    assert _rel(out, ref) <= TOL[torch.float16]


@pytest.mark.parametrize("block_n", [16, 32, 64])
def test_split_plan_covers_every_token_once(block_n):
    """The split plan, read as the decoders read it (split s covers [s · share, (s + 1) · share) clipped to T),
    covers the tokens [0, T) with disjoint whole-tile ranges, each share ⌈T / S⌉ rounded up to whole tiles. Hand-worked:
    B 8 / 16K at 32-token tiles, 512 tiles in 24 splits, is 23 splits of 22 tiles and one of 6."""
    from mustafar.kernels.decode import _split_plan

    for tokens in (1, 15, 16, 17, 70, 511, 512, 777, 16384):
        for splits in (1, 2, 3, 7, 24, 40):
            n, share = _split_plan(1, tokens, block_n, 1, splits)
            assert n == splits and share % block_n == 0
            covered = [t for s in range(n) for t in range(s * share, min((s + 1) * share, tokens))]
            assert covered == list(range(tokens)), (tokens, splits)
            assert share == math.ceil(math.ceil(tokens / splits) / block_n) * block_n
    assert _split_plan(64, 16384, 32, 1584, 24) == (24, 22 * 32)
    assert 16384 - 23 * 22 * 32 == 6 * 32


def test_wave_model_fills_the_last_wave():
    """Hand-worked: 64 (batch, head) rows of 256 tiles on 264 program slots. 4 splits = 256 programs in one wave
    of 64 tiles + 1 of overhead each (cost 65); 8 splits = 512 programs, two waves of 32 + 1 (66); the round-3
    heuristic's 9 splits left the third wave 42 % full. With 528 slots, 8 splits fit one wave (33)."""
    from mustafar.kernels.decode import _wave_model_splits

    assert _wave_model_splits(64, 256, 264) == 4
    assert _wave_model_splits(64, 256, 528) == 8
    assert _wave_model_splits(8, 1, 528) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("t,w", [(50, 6), (0, 6), (50, 0)])
def test_reference_matches_plain_attention(dtype, t, w):
    q, ks, vs, kw, vw = _case(2, 2, 3, t, w, 64, dtype, 20, None, seed=7)
    ref = _plain_attention(q, ks, vs, kw, vw, 0.125)
    out = sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="torch")
    assert _rel(out, ref) <= TOL[dtype] / 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_compress_writes_every_slot(dtype):
    """fp16 takes the SWAR threshold search, fp32 the 31-bit one; ties at the threshold are kept in channel order
    and every slot of the claimed tokens is written (pads zeroed) over a poisoned store."""
    rows = _randn(1, 2, 21, 128, dtype=dtype, seed=11)
    rows[0, 0, 3, ::3] = rows[0, 0, 3, 0]  # ties at the threshold: kept in channel order
    rows[0, 1, 5, :] = 0.0  # all ties
    store = CompressedStore(1, 2, 128, dtype, "cpu", 38)
    store.reserve(21)
    store.vals.fill_(math.nan)
    store.bits.fill_(-1)
    topk_pack_into(store, rows, 38, backend="triton")
    assert torch.equal(store.to_dense(), rows * topk_mask(rows.abs(), 38))
    slot = store.slot
    assert (store.vals[:, :, :21, 38:slot] == 0).all() and not store.vals[:, :, :21].isnan().any()


def test_bad_decode_input_raises():
    q, ks, vs, kw, vw = _case(1, 1, 2, 8, 2, 64, torch.float16, 16, 16, seed=1)
    odd_q, odd_k, odd_v, odd_kw, odd_vw = _case(1, 1, 2, 8, 2, 96, torch.float16, 16, 16, seed=1)
    with pytest.raises(ValueError, match="96"):
        sparse_decode_attention(odd_q, odd_k, odd_v, odd_kw, odd_vw, 0.1, backend="triton")
    sparse_decode_attention(odd_q, odd_k, odd_v, odd_kw, odd_vw, 0.1)  # auto: torch for other head dims
    q2, ks2, vs2, kw2, vw2 = _case(1, 2, 2, 8, 2, 64, torch.float16, 16, 16, seed=2)
    with pytest.raises(ValueError, match="H_q=3"):
        sparse_decode_attention(q2[:, :3], ks2, vs2, kw2, vw2, 0.1)
    with pytest.raises(ValueError, match="float32"):
        sparse_decode_attention(q.float(), ks, vs, kw, vw, 0.1)
    empty = CompressedStore(1, 1, 64, torch.float16, "cpu", 16)
    with pytest.raises(ValueError, match="both empty"):
        sparse_decode_attention(q, empty, empty, kw[:, :, :0], vw[:, :, :0], 0.1)
    with pytest.raises(ValueError, match="out must be"):
        sparse_decode_attention(q, ks, vs, kw, vw, 0.1, out=torch.empty(1, 2, 32, dtype=torch.float16))
    with pytest.raises(ValueError, match="scale=nan must be a finite number"):
        sparse_decode_attention(q, ks, vs, kw, vw, math.nan)


def test_decode_refuses_tensors_on_another_device():
    """A meta q against CPU stores was decoded by the reference from uninitialised memory (a finite, different
    result each call); a meta `out` was filled and the result thrown away."""
    q, ks, vs, kw, vw = _case(1, 1, 2, 8, 2, 64, torch.float32, 16, 16, seed=1)
    with pytest.raises(ValueError, match="k_store is on cpu, q on meta"):
        sparse_decode_attention(q.to("meta"), ks, vs, kw, vw, 0.1, backend="torch")
    with pytest.raises(ValueError, match="k_window is on meta, q on cpu"):
        sparse_decode_attention(q, ks, vs, kw.to("meta"), vw, 0.1)
    with pytest.raises(ValueError, match="out must be .* on cpu"):
        sparse_decode_attention(q, ks, vs, kw, vw, 0.1, out=torch.empty(1, 2, 64, device="meta"))
    with pytest.raises(ValueError, match="rows is on meta, the store on cpu"):
        topk_pack_into(ks, torch.empty(1, 1, 2, 64, device="meta"), 16, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scale_and_keep_take_any_scalar_type_and_refuse_the_rest(backend):
    import numpy as np

    q, ks, vs, kw, vw = _case(1, 1, 2, 8, 2, 64, torch.float32, 16, 16, seed=1)
    want = _plain_attention(q, ks, vs, kw, vw, 0.125)
    for scale in (np.float32(0.125), torch.tensor(0.125), 0.125):
        out = sparse_decode_attention(q, ks, vs, kw, vw, scale, backend=backend)
        assert _rel(out, want) < TOL[torch.float32]
    # scale·log2(e) would overflow fp32 inside the kernels (NaN outputs)
    with pytest.raises(ValueError, match="scale=3e\\+38 must be a finite number below 2.36e\\+38"):
        sparse_decode_attention(q, ks, vs, kw, vw, 3e38, backend=backend)
    with pytest.raises(ValueError, match="scale=True must be a real number"):
        sparse_decode_attention(q, ks, vs, kw, vw, True, backend=backend)
    rows = _randn(1, 1, 3, 64, dtype=torch.float32, seed=9)
    for keep in (np.int64(16), torch.tensor(16)):
        topk_pack_into(ks, rows, keep, backend=backend)
    assert ks.length == 14
    with pytest.raises(ValueError, match="keep must be an integer count .* got 16.0"):
        topk_pack_into(ks, rows, 16.0, backend=backend)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    import mustafar.kernels.dispatch as dispatch

    q, ks, vs, kw, vw = _case(1, 1, 2, 8, 2, 64, torch.float32, 16, 16, seed=1)
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    with pytest.raises(
        ValueError, match="backend='triton' on cpu tensors runs only under the Triton interpreter"
    ):
        sparse_decode_attention(q, ks, vs, kw, vw, 0.1, backend="triton")


@pytest.mark.parametrize("variable", [False, True])
def test_a_failed_pack_launch_leaves_the_store_as_it_was(monkeypatch, variable):
    """The Triton packs claim their slots before the launch: a launch that raised left tokens with empty bitmaps
    that every later decode attended to as zeros."""
    import mustafar.kernels.compress as compress

    q, ks, vs, kw, vw = _case(1, 1, 2, 8, 2, 64, torch.float32, None if variable else 16, 16, seed=1)
    before = sparse_decode_attention(q, ks, vs, kw, vw, 0.1, backend="torch")
    nnz = None if ks.fixed else ks.row_nnz.clone()

    def fail(*args, **kwargs):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(compress, "_launch_plain", fail)
    monkeypatch.setattr(compress, "_launch_ptx", fail)
    rows = _randn(1, 1, 3, 64, dtype=torch.float32, seed=9)
    with pytest.raises(RuntimeError, match="launch failed"):
        if variable:
            pack_into(ks, rows, threshold_mask(rows.abs(), 0.6), backend="triton")
        else:
            topk_pack_into(ks, rows, 16, backend="triton")
    assert ks.length == 8 and (nnz is None or torch.equal(ks.row_nnz, nnz))
    after = sparse_decode_attention(q, ks, vs, kw, vw, 0.1, backend="torch")
    assert torch.equal(after, before)


def test_static_stores_on_the_torch_path_read_each_rows_count_as_the_kernels_do():
    """Rows holding different counts were refused, K and V counts that differ crashed in einsum, and an empty
    store with no window gave zeros where the kernels give NaN."""
    d, keep = 64, 16
    rows = _randn(2, 1, 6, d, dtype=torch.float32, seed=3)
    stores = [CompressedStore(2, 1, d, torch.float32, "cpu", keep, capacity=8, static=True) for _ in range(2)]
    for st in stores:
        topk_pack_into(st, rows, keep, backend="torch")
    ks, vs = stores
    ks.length_tensor.copy_(torch.tensor([6, 4], dtype=torch.int32))  # row 1 holds 4 tokens
    vs.length_tensor.copy_(torch.tensor([5, 4], dtype=torch.int32))  # V of row 0 holds 5: 5 are attended
    q = _randn(2, 2, d, dtype=torch.float32, seed=4)
    kw, vw = _randn(2, 1, 1, d, dtype=torch.float32, seed=5), _randn(2, 1, 1, d, dtype=torch.float32, seed=6)
    out = sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="torch")
    for b, n in ((0, 5), (1, 4)):
        k = CompressedStore(1, 1, d, torch.float32, "cpu", keep)
        v = CompressedStore(1, 1, d, torch.float32, "cpu", keep)
        topk_pack_into(k, rows[b : b + 1, :, :n], keep, backend="torch")
        topk_pack_into(v, rows[b : b + 1, :, :n], keep, backend="torch")
        want = _plain_attention(q[b : b + 1], k, v, kw[b : b + 1], vw[b : b + 1], 0.125)
        assert _rel(out[b : b + 1], want) < TOL[torch.float32]
    empty = [CompressedStore(2, 1, d, torch.float32, "cpu", keep, capacity=8, static=True) for _ in range(2)]
    nothing = sparse_decode_attention(q, *empty, kw[:, :, :0], vw[:, :, :0], 0.125, backend="torch")
    assert nothing.isnan().all()


def test_decoder_and_pack_choice_on_cpu():
    """The Gluon/PTX kernels are GPU-only: CPU tensors (the interpreter) always take the portable kernels."""
    q, ks, vs, _, _ = _case(1, 1, 2, 8, 2, 64, torch.float16, 16, 16, seed=1)
    assert decoder_for(q, ks, vs) == "portable"
    assert not gluon_capable(q.device)


def test_occupancy_estimate_hand_worked():
    """H100 limits (64K registers, 228 KB shared, 2048 threads per SM): 158 registers -> 160 x 32 = 5120 per warp ->
    12 one-warp programs; 16 KB + 1 KB reserved per program -> 13; 32 KB -> 6 (not 7: the reserve); tiny kernels
    stop at 32 resident blocks."""
    from mustafar.kernels.decode import occupancy_estimate

    h100 = (65536, 233472, 2048)
    assert occupancy_estimate(158, 1, 16384, *h100) == 12
    assert occupancy_estimate(96, 1, 16384, *h100) == 13
    assert occupancy_estimate(96, 1, 32768, *h100) == 6
    assert occupancy_estimate(32, 1, 0, *h100) == 32
    assert occupancy_estimate(223, 4, 1024, *h100) == 2


def test_cached_launch_configs_follow_every_store_property():
    """The launch configuration is cached per shape: stores of one shape that the scatter decoder compiles
    differently (consecutive, strided or per-head-ordered 4:8 keys, fp8 codes) must each get their own, never one
    cached for another (a calibrated store's config reused for a consecutive one reads bitmap words as its order).
    Each cached config against one built afresh, after all of them were cached."""
    from mustafar.kernels.decode import _configure, _new_config
    from mustafar.pruning.keep import balanced_groups

    d = 128

    def store(
        group: int, strided: bool = False, order: bool = False, values: str = "native", keep: int = d // 2
    ) -> CompressedStore:
        st = CompressedStore(
            1, 2, d, torch.float16, "cpu", keep, word_quota=True, nm_group=group, nm_strided=strided,
            value_dtype=values,
        )  # fmt: skip
        if order:
            st.set_head_order(
                balanced_groups(torch.rand(1, 2, d, generator=torch.Generator().manual_seed(0)), group)
            )
        return st

    q = torch.randn(1, 8, d, dtype=torch.float16)
    v, v16 = store(4), store(16, values="fp8", keep=40)
    pairs = [
        (store(8), v),
        (store(8, strided=True), v),
        (store(8, order=True), v),
        (store(8, order=True, values="fp8"), v),
        (store(0), v),
        # five of sixteen: consecutive or per-head keys and their V (fp8 codes; 40 of 128 kept on both sides)
        (store(16, values="fp8", keep=40), v16),
        (store(16, order=True, values="fp8", keep=40), v16),
        (store(0, values="fp8", keep=40), v16),
    ]
    for ks, vs in pairs:
        _configure(q, ks, vs, "scatter", None, None)
    for ks, vs in pairs:
        assert (
            _configure(q, ks, vs, "scatter", None, None).constexprs
            == _new_config(q, ks, vs, "scatter", None, None).constexprs
        )


def test_compiled_launch_refuses_a_short_grid():
    """The C launcher takes exactly three grid dimensions where Triton's dispatcher pads a shorter grid: a
    two-dimensional grid reaching it shifted every argument by one (a GPU-only TypeError the interpreter never
    meets), so the cached launch refuses it up front, naming the grid."""
    from mustafar.kernels.compress import _prune_pack_kernel
    from mustafar.kernels.launch import CompiledLaunch

    launch = CompiledLaunch(_prune_pack_kernel, {}, {})
    with pytest.raises(ValueError, match=r"three-dimensional grid, got \(4, 2\)"):
        launch((4, 2), (), 0)


class _RecordingLauncher:
    """Triton's own Python launcher (``CudaLauncher.__call__``, the reference) around a recording C function."""

    def __init__(self, scratch: int = 0) -> None:
        from triton.backends.nvidia.driver import CudaLauncher

        self.calls: list[tuple] = []
        # its __init__ compiles the C launcher: set only what __call__ reads
        self.run = object.__new__(CudaLauncher)
        self.run.launch = lambda *args: self.calls.append(args)
        self.run.launch_cooperative_grid, self.run.launch_pdl = False, True
        self.run.global_scratch_size = self.run.profile_scratch_size = scratch
        self.run.global_scratch_align = self.run.profile_scratch_align = 1
        self.run.num_ctas = 1
        self.function, self.packed_metadata = 1234, (1, 1, 0)


def test_direct_launch_passes_what_tritons_launcher_passes(monkeypatch):
    """The direct launch (the eager op's path, round 30) skips Triton's Python launcher: the C function must get
    exactly the arguments that launcher gives it (grid, stream, function, launch flags, scratch, metadata, hooks,
    then the kernel's arguments and the constexprs), pointers as the ints the caller passes. A kernel that needs
    scratch memory, or a launch hook, keeps Triton's launcher."""
    from mustafar.kernels import launch as launch_mod
    from mustafar.kernels.compress import _prune_pack_kernel

    names = _prune_pack_kernel.arg_names
    consts = {n: i for i, n in enumerate(names) if n.isupper()}
    launch = launch_mod.CompiledLaunch(_prune_pack_kernel, consts, {})
    args = tuple(range(100, 100 + len(launch.runtime_names)))
    kernel = _RecordingLauncher()
    launch.kernels["k"] = kernel
    launch._direct("k", kernel)
    launch((3, 2, 1), args, 77, "k")  # a cached kernel through Triton's launcher
    assert launch.launch((3, 2, 1), args, 77, "k") is True
    assert len(kernel.calls) == 2 and kernel.calls[0] == kernel.calls[1]
    assert kernel.calls[1][:7] == (3, 2, 1, 77, 1234, False, True)
    assert kernel.calls[1][-len(consts) :] == tuple(consts.values())
    assert launch.launch((3, 2, 1), args, 77, "other key") is False  # nothing cached: the caller compiles
    monkeypatch.setattr(launch_mod, "hooked", lambda: True)
    assert launch.launch((3, 2, 1), args, 77, "k") is False
    scratch = _RecordingLauncher(scratch=64)
    launch._direct("s", scratch)
    assert "s" not in launch.direct


def test_spec_key_follows_tritons_specialisation():
    """The launch cache's key from addresses as ints: aligned or not (each pointer's alignment when one is not),
    the ints themselves, and of each length only what Triton specialises (== 1, divisible by 16)."""
    from mustafar.kernels.launch import spec_key

    assert spec_key((16, 32, 0), (5, 7), (1, 32, 33)) == (True, 5, 7, 1, 16, 0)
    assert spec_key((16, 8), (), ()) == ((True, False),)
    assert spec_key((16,), (), (0, 2)) == (True, 16, 0)
    assert spec_key((16,), (), (1,)) != spec_key((16,), (), (16,)) != spec_key((16,), (), (17,))


def test_pack_launches_are_cached_per_device():
    """A compiled kernel is loaded into one device's context, so the cached launches (packs, merge) are kept per device
    (a launch cached on one GPU and reused on another would run a function handle of the wrong context), and
    reused for the same device, kernel, constexprs and dtypes."""
    from mustafar.kernels.compress import _prune_pack_kernel
    from mustafar.kernels.launch import cached_launch

    names = _prune_pack_kernel.arg_names
    consts = dict.fromkeys(names[names.index("KEEP") :], 0)  # every constexpr, as the packs pass them
    args = (_prune_pack_kernel, consts, 2, (torch.float16, torch.float16))
    first = cached_launch(*args, torch.device("cuda", 0))
    assert cached_launch(*args, torch.device("cuda", 0)) is first
    assert cached_launch(*args, torch.device("cuda", 1)) is not first


def test_host_integer_helpers_equal_tritons():
    """The host-side ``cdiv`` and ``next_power_of_2`` (Python ints; Triton's are constexpr functions costing ~2 µs a
    call from the host) give Triton's values."""
    import triton

    from mustafar.kernels.support import cdiv, next_power_of_2

    assert [next_power_of_2(n) for n in range(0, 5000)] == [triton.next_power_of_2(n) for n in range(0, 5000)]
    pairs = [
        (a, b) for a in (0, 1, 2, 31, 32, 33, 1000, 16383, 16384, 2**31 + 5) for b in (1, 3, 16, 32, 64, 171)
    ]
    assert [cdiv(a, b) for a, b in pairs] == [triton.cdiv(a, b) for a, b in pairs]
