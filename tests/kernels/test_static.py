"""Static stores (device-side length, fixed capacity) under the Triton interpreter: the decode with one launch plan
for every length against the dynamic path and the PyTorch reference, the top-k pack at the device offset against
the dynamic pack, overflow, bad input, and the launch caches (no scratch allocation after the first call)."""

from __future__ import annotations

import copy
import importlib
import math
import pickle

import pytest
import torch

from mustafar.formats import CompressedStore
from mustafar.kernels import pack_into, sparse_decode_attention, topk_pack_into
from mustafar.pruning.keep import topk_mask

pytestmark = pytest.mark.usefixtures("triton_interpreter")

B, HKV, N_REP, D, KEEP, CAP, WIN = 2, 1, 2, 64, 20, 128, 3


def _randn(*shape, seed, dtype=torch.float16):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _static_pair(**kw):
    return [
        CompressedStore(B, HKV, D, torch.float16, "cpu", KEEP, capacity=CAP, static=True, **kw) for _ in "kv"
    ]


def test_static_decode_one_plan_every_length(poison):
    """Capacity 128 (2 tiles of 64) for 2 (batch, head) rows on the CPU's 4-SM wave model: 2 splits of 64 tokens,
    so length 0 (window only) leaves both empty, 1 and 64 the second, 128 (= capacity) none. The static launch
    keeps that one plan at every length and gives the dynamic path's result (same rows, host length, its own
    plan) and the reference's."""
    decode = importlib.import_module("mustafar.kernels.decode")
    rows = {s: _randn(B, HKV, CAP, D, seed=i) for i, s in enumerate("kv")}
    q = _randn(B, HKV * N_REP, D, seed=5)
    kw, vw = _randn(B, HKV, WIN, D, seed=6), _randn(B, HKV, WIN, D, seed=7)
    ks, vs = _static_pair()
    filled, plans, outs = 0, set(), {}
    for length in (0, 1, 64, 128):
        for store, s in ((ks, "k"), (vs, "v")):
            topk_pack_into(store, rows[s][:, :, filled:length], KEEP, backend="triton")
        filled = length
        assert ks.length_tensor.tolist() == [length] * B
        plans.add(decode._planned_splits(q, ks, vs, "portable"))
        out = torch.full_like(q, math.nan)
        sparse_decode_attention(q, ks, vs, kw, vw, D**-0.5, backend="triton", out=out)
        dk, dv = (CompressedStore(B, HKV, D, torch.float16, "cpu", KEEP) for _ in "kv")
        topk_pack_into(dk, rows["k"][:, :, :length], KEEP, backend="torch")
        topk_pack_into(dv, rows["v"][:, :, :length], KEEP, backend="torch")
        ref = sparse_decode_attention(q, dk, dv, kw, vw, D**-0.5, backend="torch")
        dyn = sparse_decode_attention(q, dk, dv, kw, vw, D**-0.5, backend="triton")
        assert not out.isnan().any(), f"length {length}"
        assert _rel(out, ref) <= 1e-2, f"length {length}: {_rel(out, ref):.2e}"
        assert _rel(out, dyn) <= 1e-3, f"length {length}: {_rel(out, dyn):.2e}"
        outs[length] = out
    assert plans == {2}
    # per-row device lengths: each batch row is decoded up to its own count
    ks.length_tensor.copy_(torch.tensor([64, 1], dtype=torch.int32))
    vs.length_tensor.copy_(torch.tensor([64, 1], dtype=torch.int32))
    out = sparse_decode_attention(q, ks, vs, kw, vw, D**-0.5, backend="triton")
    assert _rel(out[0], outs[64][0]) <= 1e-3 and _rel(out[1], outs[1][1]) <= 1e-3


def test_static_topk_pack_advances_on_device():
    """Appends of 3, 0, 17 and 1 tokens land where the dynamic pack puts them (bitmaps, values, zeroed pads) and
    advance the device count; nothing past the written tokens is touched."""
    rows = _randn(B, HKV, 21, D, seed=3)
    rows[1, 0, 4, ::2] = 0.5  # ties at the threshold
    st = CompressedStore(B, HKV, D, torch.float16, "cpu", KEEP, capacity=30, static=True)
    st.vals.fill_(math.nan)
    st.bits.fill_(-1)
    dyn = CompressedStore(B, HKV, D, torch.float16, "cpu", KEEP)
    at = 0
    for n in (3, 0, 17, 1):
        topk_pack_into(st, rows[:, :, at : at + n], KEEP, backend="triton")
        topk_pack_into(dyn, rows[:, :, at : at + n], KEEP, backend="torch")
        at += n
        assert st.length_tensor.tolist() == [at] * B
    assert st.length == 21 and st.capacity == 30
    assert torch.equal(st.bits[:, :, :21], dyn.bits[:, :, :21])
    assert torch.equal(st.vals[:, :, :21], dyn.vals[:, :, :21])
    assert torch.equal(st.to_dense(), rows * topk_mask(rows.abs(), KEEP))
    assert st.vals[:, :, 21:].isnan().all() and (st.bits[:, :, 21:] == -1).all()


def test_static_overflow_drops_rows_and_raises_on_read():
    """A device-side append past the capacity writes nothing out of its rows (the next (batch, head) row's slots
    stay intact) and the next host read of the length names the overflow."""
    rows = _randn(1, 2, 7, D, seed=4)
    st = CompressedStore(1, 2, D, torch.float16, "cpu", KEEP, capacity=5, static=True)
    topk_pack_into(st, rows[:, :, :4], KEEP, backend="triton")
    before = st.vals.clone(), st.bits.clone()
    topk_pack_into(st, rows[:, :, 4:7], KEEP, backend="triton")  # one fits, two do not
    want = rows[:, :, 4:5] * topk_mask(rows[:, :, 4:5].abs(), KEEP)
    assert torch.equal(st.vals[:, :, :4], before[0][:, :, :4]) and torch.equal(
        st.bits[:, :, :4], before[1][:, :, :4]
    )
    st.length_tensor.fill_(5)
    assert torch.equal(st.to_dense()[:, :, 4:], want)
    st.length_tensor.fill_(7)
    with pytest.raises(ValueError, match="overflowed: appends reached 7 tokens, capacity is 5"):
        st.length  # noqa: B018


def test_static_host_paths_and_reset():
    """The given-mask pack and the PyTorch references work on a static store (host-driven, synchronising), the
    capacity is enforced there, and reset() empties it on the device."""
    rows = _randn(1, 2, 6, D, seed=8)
    mask = topk_mask(rows.abs(), KEEP)
    st = CompressedStore(1, 2, D, torch.float16, "cpu", KEEP, capacity=8, static=True)
    pack_into(st, rows, mask, backend="triton")
    topk_pack_into(st, rows[:, :, :2], KEEP, backend="torch")
    assert st.length == 8
    assert torch.equal(st.to_dense(), torch.cat([rows * mask, rows[:, :, :2] * mask[:, :, :2]], dim=2))
    with pytest.raises(ValueError, match="capacity 8 holds 8 tokens, cannot take 1 more"):
        pack_into(st, rows[:, :, :1], mask[:, :, :1], backend="torch")
    st.reset()
    assert st.length_tensor.tolist() == [0] and st.length == 0


def test_static_bad_input():
    with pytest.raises(ValueError, match="fixed layout and a positive capacity, got keep=None"):
        CompressedStore(1, 1, D, torch.float16, "cpu", None, capacity=4, static=True)
    with pytest.raises(ValueError, match="capacity=0"):
        CompressedStore(1, 1, D, torch.float16, "cpu", KEEP, static=True)
    with pytest.raises(ValueError, match="static=True"):
        CompressedStore(1, 1, D, torch.float16, "cpu", KEEP).length_tensor  # noqa: B018
    st = CompressedStore(1, 1, D, torch.float16, "cpu", KEEP, capacity=4, static=True)
    st.length_tensor.fill_(1)
    dyn = CompressedStore(1, 1, D, torch.float16, "cpu", KEEP)
    q, w = torch.zeros(1, 2, D, dtype=torch.float16), torch.zeros(1, 1, 1, D, dtype=torch.float16)
    with pytest.raises(ValueError, match="k_store static=True but v_store static=False"):
        sparse_decode_attention(q, st, dyn, w, w, 0.1, backend="triton")


def test_launch_caches_its_scratch(monkeypatch):
    """Only the first call of a shape allocates split partials; later calls (given ``out``) allocate nothing."""
    decode = importlib.import_module("mustafar.kernels.decode")
    calls = []
    monkeypatch.setattr(decode, "_PARTIALS", {})
    monkeypatch.setattr(
        decode, "_empty", lambda shape, dtype, device: calls.append(shape) or torch.empty(shape)
    )
    ks, vs = _static_pair()
    for s, store in (("k", ks), ("v", vs)):
        topk_pack_into(store, _randn(B, HKV, 9, D, seed=ord(s)), KEEP, backend="triton")
    q, w = _randn(B, HKV * N_REP, D, seed=1), _randn(B, HKV, 2, D, seed=2)
    out = torch.empty_like(q)
    sparse_decode_attention(q, ks, vs, w, w, 0.1, backend="triton", out=out)
    assert calls == [(B, HKV * N_REP, 2, D), (B, HKV * N_REP, 2)]
    first = out.clone()
    sparse_decode_attention(q, ks, vs, w, w, 0.1, backend="triton", out=out)
    assert len(calls) == 2 and torch.equal(out, first)


def _record_launches(monkeypatch) -> list:
    """Direct launches recorded (kernel, grid, arguments, stream, key) instead of run: the interpreter has none."""
    from mustafar.kernels.launch import CompiledLaunch

    launched = []

    def record(self, grid, args, stream, key):
        launched.append((self.fn, grid, args, stream, key))
        return True

    monkeypatch.setattr(CompiledLaunch, "launch", record)
    return launched


def test_a_replayed_launch_plan_launches_what_the_full_path_launches(monkeypatch):
    """Static stores' eager calls replay the last call's launches (``decode._Plan``) while nothing they depend on
    changed. With the direct launches recorded instead of run (the interpreter has none), each call's launches are
    compared with the full path's for the same inputs (the plan dropped first): new q values, new window and
    output addresses, another V store, window strides, scale, an ``out`` given. A bad input (an ``out`` included)
    after a plan still fails its check, and only static stores keep a plan."""
    decode = importlib.import_module("mustafar.kernels.decode")
    launched = _record_launches(monkeypatch)
    ks, vs = _static_pair()
    vs2 = _static_pair()[1]
    for store, seed in ((ks, 1), (vs, 2), (vs2, 3)):
        topk_pack_into(store, _randn(B, HKV, 40, D, seed=seed), KEEP, backend="torch")

    def call(q, v, kw, vw, scale, **kw_args):
        """(replayed?, the decoder's launch, the merge's launch without the output's address)."""
        had = ks.launch_plan
        launched.clear()
        sparse_decode_attention(q, ks, v, kw, vw, scale, backend="triton", **kw_args)
        (dec, merge) = launched
        replayed = had is not None and ks.launch_plan is had
        return replayed, dec, (*merge[:2], merge[2][:2] + merge[2][3:], *merge[3:])

    def both(*args, **kw_args):
        first = call(*args, **kw_args)
        ks.launch_plan = None
        full = call(*args, **kw_args)
        assert first[1:] == full[1:]
        return first[0]

    q = _randn(B, HKV * N_REP, D, seed=5)
    kw, vw = _randn(B, HKV, WIN, D, seed=6), _randn(B, HKV, WIN, D, seed=7)
    assert ks.launch_plan is None
    call(q, vs, kw, vw, 0.125)
    assert isinstance(ks.launch_plan, decode._Plan)
    assert both(q.clone(), vs, kw.clone(), vw.clone(), 0.125)  # new addresses, same signature: replayed
    assert not both(q, vs2, kw, vw, 0.125)  # another V store
    assert not both(q, vs, kw, vw, 0.25)  # another scale
    wide = _randn(B, HKV, WIN, 2 * D, seed=8)[..., :D]  # same shape, another row stride
    assert not both(q, vs, wide, vw, 0.125)
    assert both(q, vs, kw, vw, 0.125) is False  # the plan now follows the last signature
    assert both(q, vs, kw, vw, 0.125)
    assert both(q, vs, kw, vw, 0.125, out=torch.empty_like(q))  # an out of its own: replayed into it
    mine = torch.empty_like(q)
    assert (
        call(q, vs, kw, vw, 0.125, out=mine)[0] and launched[1][2][2] == mine.data_ptr()
    )  # the merge writes it
    plan = ks.launch_plan
    bad = torch.empty(B, HKV * N_REP, 2 * D, dtype=q.dtype)[..., :D]
    with pytest.raises(ValueError, match="out must be a contiguous"):  # a bad out still fails its check
        sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton", out=bad)
    assert ks.launch_plan is plan
    with pytest.raises(ValueError, match="q is"):
        sparse_decode_attention(q[:1], ks, vs, kw[:1], vw[:1], 0.125, backend="triton")
    with pytest.raises(ValueError, match="scale"):
        sparse_decode_attention(q, ks, vs, kw, vw, math.inf, backend="triton")
    copied = copy.deepcopy(ks)  # a copy's buffers are its own: no plan
    assert copied.launch_plan is None and pickle.loads(pickle.dumps(ks)).launch_plan is None
    assert torch.equal(copied.bits, ks.bits) and ks.launch_plan is plan
    variable = [CompressedStore(B, HKV, D, torch.float16, "cpu", None) for _ in "kv"]
    for store in variable:
        pack_into(
            store, *(lambda r: (r, topk_mask(r.abs(), KEEP)))(_randn(B, HKV, 40, D, seed=9)), backend="torch"
        )
    launched.clear()
    sparse_decode_attention(q, *variable, kw, vw, 0.125, backend="triton")
    assert len(launched) == 2 and variable[0].launch_plan is None  # variable layouts take the full path


@pytest.mark.parametrize("batch", [2, 8])
def test_a_dynamic_stores_plan_follows_its_length(monkeypatch, batch):
    """Dynamic (fixed-layout) stores keep a plan too: a replayed call recomputes the split plan at the store's
    host-side length and patches the length and each split's share into the arguments. Launches recorded as in the
    test above: token by token from 1 to 260 (at batch 2 the split count changes with the length, at batch 8 only
    each split's share does), then a grown buffer, each call's launches equal the full path's; unequal K/V lengths
    and an empty store with no window still fail their checks after a plan."""
    decode = importlib.import_module("mustafar.kernels.decode")
    launched = _record_launches(monkeypatch)
    ks, vs = (CompressedStore(batch, HKV, D, torch.float16, "cpu", KEEP) for _ in "kv")
    rows = _randn(batch, HKV, 400, D, seed=4)
    q = _randn(batch, HKV * N_REP, D, seed=5)
    kw, vw = _randn(batch, HKV, WIN, D, seed=6), _randn(batch, HKV, WIN, D, seed=7)
    replays, splits, shares = 0, set(), set()
    for t in range(260):
        for store in (ks, vs):
            topk_pack_into(store, rows[:, :, t : t + 1], KEEP, backend="torch")
        had = ks.launch_plan
        launched.clear()
        sparse_decode_attention(q.clone(), ks, vs, kw, vw, 0.125, backend="triton")
        first = list(launched)
        replays += had is not None and ks.launch_plan is had
        ks.launch_plan = None
        launched.clear()
        sparse_decode_attention(q.clone(), ks, vs, kw, vw, 0.125, backend="triton")
        # the decoder's launches equal but for q's address; the merge's but for the output's
        assert [(d[:2], d[2][1:], d[3:]) for d in first[:1]] == [
            (d[:2], d[2][1:], d[3:]) for d in launched[:1]
        ]
        assert first[1][2][:2] + first[1][2][3:] == launched[1][2][:2] + launched[1][2][3:]
        splits.add(first[0][1][2])
        shares.add((first[0][1][2], first[0][2][-4]))
        assert isinstance(ks.launch_plan, decode._Plan)
    assert replays > 200 and (len(splits) > 1 if batch == 2 else len(splits) == 1 and len(shares) > 3)
    grown = ks.bits
    topk_pack_into(ks, rows[:, :, 260:400], KEEP, backend="torch")
    topk_pack_into(vs, rows[:, :, 260:400], KEEP, backend="torch")
    assert ks.bits is not grown  # the buffers moved: the plan no longer applies
    had = ks.launch_plan
    sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton")
    assert ks.launch_plan is not had
    topk_pack_into(ks, rows[:, :, :1], KEEP, backend="torch")
    with pytest.raises(ValueError, match="k_store holds 401 tokens, v_store 400"):
        sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton")
    ek, ev = (CompressedStore(batch, HKV, D, torch.float16, "cpu", KEEP) for _ in "kv")
    for store in (ek, ev):
        topk_pack_into(store, rows[:, :, :1], KEEP, backend="torch")
    no_window = kw[:, :, :0].contiguous(), vw[:, :, :0].contiguous()
    sparse_decode_attention(q, ek, ev, *no_window, 0.125, backend="triton")
    assert ek.launch_plan is not None
    ek.length = ev.length = 0  # same signature, nothing left to attend to
    with pytest.raises(ValueError, match="nothing to attend to"):
        sparse_decode_attention(q, ek, ev, *no_window, 0.125, backend="triton")


def test_a_plan_never_replays_over_buffers_that_took_a_freed_buffers_id(monkeypatch):
    """A plan made on empty dynamic stores (window only: the launch holds stand-ins for their buffers) must not
    replay once appends have grown the stores, even where the new buffers would take the ids of freed ones: the
    plan holds every buffer its signature names (checked), so no grown store's signature can equal the plan's.
    Forty fresh pairs of stores, each grown by one-token claims (``extend``) without a decode call between; without
    the plan holding the buffers, the signature matched again in most trials and a call there replayed the stale
    plan (round 31's review)."""
    decode = importlib.import_module("mustafar.kernels.decode")
    launched = _record_launches(monkeypatch)
    q = _randn(B, HKV * N_REP, D, seed=5)
    kw, vw = _randn(B, HKV, WIN, D, seed=6), _randn(B, HKV, WIN, D, seed=7)
    for _ in range(40):
        ks, vs = (CompressedStore(B, HKV, D, torch.float16, "cpu", KEEP) for _ in "kv")
        sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton")  # capacity 0: window only
        plan = ks.launch_plan
        assert {id(ks.bits), id(ks.vals), id(vs.bits), id(vs.vals)} <= {id(r) for r in plan.refs}
        for _ in range(40):
            for store in (ks, vs):
                store.extend(1, KEEP)  # slots claimed (their contents never read: launches are recorded)
            # the grown buffers' ids are new
            assert decode._signature(q, ks, vs, kw, vw, 0.125, 0) != plan.sig
        launched.clear()
        sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton")
        assert ks.launch_plan is not plan  # the full path ran and made a new plan
        first = launched[0][2][1:]
        ks.launch_plan = None
        launched.clear()
        sparse_decode_attention(q, ks, vs, kw, vw, 0.125, backend="triton")
        assert first == launched[0][2][1:]
