"""PTX body of the GPU prune+pack kernel (``compress._topk_pack_ptx_kernel``), generated here, plus a numpy emulator.

One thread owns one row (D fp16/bf16 values = D/2 int32 words) and runs straight-line PTX (no cross-lane work
except the load and the copy-out):

0. **Load.** When a warp's 32 rows are one contiguous block (contiguous rows: the default), the warp reads it with
   coalesced 16-B loads and transposes it through shared memory (rows an odd number of 16-B units apart); otherwise
   each thread reads its own row (16-B loads, 32 lines per instruction: ~8 % slower on H100).
1. **Threshold search in byte lanes.** The 15-bit key ``bits & 0x7FFF`` orders |x| exactly. The high key bytes of
   four channels are permuted (``prmt``) into one int32, each lane flagged with 0x80, so one subtract tests four keys
   (``(0x80 | k) - c`` keeps bit 7 iff ``k >= c``, never borrows across lanes) and one mask + shifted add counts them:
   7 passes over D/4 words find the top 7 key bits ``H``. The low key bytes of the keys whose high byte equals ``H``
   (bits 7..1; every other lane 0, its count known) go through 7 more passes for ``M``.
2. **Exact tie order in bitmaps.** With ``cgt`` = count(key >> 1 > (H, M)) (the count at the search's last rejected
   candidate) and the 128-bit sets GT (key >> 1 > (H, M)), EQ (== (H, M)) and BIT0 (key bit 0), the kept set is
   GT | the first ``need`` of (EQ & BIT0, then EQ & ~BIT0) in channel order: one 32-bit select (5 popc steps).
   The byte-lane permutation puts channels c, c+8, c+16, c+24 in one word, so a flag word joins the bitmap with one
   shifted add.
3. **Pack.** Every value is written (``st.shared.u16``) at this thread's running slot position, which advances only
   when the value is kept (so dropped values are overwritten); pad slots are zeroed; after ``bar.warp.sync`` each
   lane copies word ``lane`` of each of the warp's 32 slots to global memory (coalesced 4-byte stores, the slots of
   consecutive rows are contiguous). Bitmap words: one vector store per row.

The emulator runs the same instruction list on numpy arrays (one element per thread) so the CPU tests check the
exact PTX program, not a paraphrase of it.
"""

from __future__ import annotations

import functools

import numpy as np

M32 = 0xFFFFFFFF


class Gen:
    def __init__(self, emu=None):
        self.lines = []
        self.cnt = {"b32": 0, "pred": 0, "b16": 0, "b64": 0}
        self.emu = emu  # None or dict: R (list of uint32 arrays), n threads, smem, gmem ...
        self.V = {}

    # ---- registers
    def new(self, kind="b32"):
        self.cnt[kind] += 1
        pre = {"b32": "t", "pred": "p", "b16": "h", "b64": "d"}[kind]
        return f"{pre}{self.cnt[kind]}"

    def val(self, a):
        if isinstance(a, int):
            return np.uint64(a) if a > M32 else np.uint32(a & M32)
        return self.V[a]

    def emit(self, s):
        self.lines.append(s)

    @staticmethod
    def opnd(a):
        return str(a) if isinstance(a, int) else a

    # ---- arithmetic
    _OPS = {
        "add.u32": lambda a, b: a + b,
        "sub.u32": lambda a, b: a - b,
        "and.b32": lambda a, b: a & b,
        "or.b32": lambda a, b: a | b,
        "xor.b32": lambda a, b: a ^ b,
        "shr.u32": lambda a, b: a >> b,
        "shl.b32": lambda a, b: np.where(
            b >= 32, np.uint32(0), a << np.minimum(b, 31).astype(np.uint32)
        ).astype(np.uint32),
        "mul.lo.u32": lambda a, b: a * b,
    }

    def bin(self, op, a, b):
        if isinstance(a, int):
            a = self.mov(a)
        d = self.new()
        self.emit(f"{op} {d}, {self.opnd(a)}, {self.opnd(b)};")
        if self.emu is not None:
            with np.errstate(over="ignore"):
                self.V[d] = np.asarray(self._OPS[op](self.val(a), self.val(b))).astype(np.uint32)
        return d

    def add(self, a, b):
        return self.bin("add.u32", a, b)

    def sub(self, a, b):
        return self.bin("sub.u32", a, b)

    def and_(self, a, b):
        return self.bin("and.b32", a, b)

    def or_(self, a, b):
        return self.bin("or.b32", a, b)

    def shr(self, a, b):
        return self.bin("shr.u32", a, b)

    def shl(self, a, b):
        return self.bin("shl.b32", a, b)

    def mul(self, a, b):
        return self.bin("mul.lo.u32", a, b)

    def not_(self, a):
        d = self.new()
        self.emit(f"not.b32 {d}, {a};")
        if self.emu is not None:
            self.V[d] = (~self.val(a)).astype(np.uint32)
        return d

    def mov(self, a):
        d = self.new()
        self.emit(f"mov.b32 {d}, {self.opnd(a)};")
        if self.emu is not None:
            self.V[d] = np.broadcast_to(self.val(a), (self.emu["n"],)).astype(np.uint32).copy()
        return d

    def prmt(self, a, b, sel):
        d = self.new()
        self.emit(f"prmt.b32 {d}, {a}, {b}, {sel:#x};")
        if self.emu is not None:
            lo, hi = self.val(a).astype(np.uint64), self.val(b).astype(np.uint64)
            x = lo | (hi << np.uint64(32))
            out = np.zeros_like(lo)
            for k in range(4):
                s = (sel >> (4 * k)) & 7
                out |= ((x >> np.uint64(8 * s)) & np.uint64(0xFF)) << np.uint64(8 * k)
            self.V[d] = out.astype(np.uint32)
        return d

    def popc(self, a):
        d = self.new()
        self.emit(f"popc.b32 {d}, {a};")
        if self.emu is not None:
            v = self.val(a).astype(np.uint64)
            c = np.zeros_like(v)
            for k in range(32):
                c += (v >> np.uint64(k)) & np.uint64(1)
            self.V[d] = c.astype(np.uint32)
        return d

    _CMP = {
        "ge": np.greater_equal,
        "gt": np.greater,
        "lt": np.less,
        "le": np.less_equal,
        "ne": np.not_equal,
        "eq": np.equal,
    }

    def setp(self, cmp, a, b, typ="u32"):
        p = self.new("pred")
        self.emit(f"setp.{cmp}.{typ} {p}, {self.opnd(a)}, {self.opnd(b)};")
        if self.emu is not None:
            va, vb = self.val(a), self.val(b)
            if typ == "s32":
                va, vb = np.asarray(va).astype(np.int32), np.asarray(vb).astype(np.int32)
            self.V[p] = np.broadcast_to(self._CMP[cmp](va, vb), (self.emu["n"],)).copy()
        return p

    def selp(self, a, b, p):
        d = self.new()
        self.emit(f"selp.b32 {d}, {self.opnd(a)}, {self.opnd(b)}, {p};")
        if self.emu is not None:
            self.V[d] = np.where(self.V[p], self.val(a), self.val(b)).astype(np.uint32)
        return d

    def padd(self, r, imm, p):  # in place: @p add r, r, imm
        self.emit(f"@{p} add.u32 {r}, {r}, {imm};")
        if self.emu is not None:
            self.V[r] = np.where(self.V[p], self.V[r] + np.uint32(imm), self.V[r]).astype(np.uint32)

    # ---- memory (emulated: global loads come from emu["R"], smem is a flat byte array, gmem stores recorded)
    def ldv4(self, ptr, off):
        ds = [self.new() for _ in range(4)]
        self.emit(f"ld.global.nc.v4.b32 {{{', '.join(ds)}}}, [{ptr}+{off}];")
        if self.emu is not None:
            for k, d in enumerate(ds):
                self.V[d] = self.emu["R"][off // 4 + k].copy()
        return ds

    def ldgv4p(
        self, ptr, off, p
    ):  # predicated global load by address (emulated from emu["xmem"] at emu["xb"])
        ds = [self.new() for _ in range(4)]
        self.emit(f"@{p} ld.global.nc.v4.b32 {{{', '.join(ds)}}}, [{ptr}+{off}];")
        if self.emu is not None:
            xm, m = self.emu["xmem"], self.V[p]
            a = np.where(m, self.V[ptr] + off - self.emu["xb"], 0) // 4
            for k, d in enumerate(ds):
                self.V[d] = np.where(m, xm[a + k], 0).astype(np.uint32)
        return ds

    def stsv4(self, addr, regs, off):
        self.emit(f"st.shared.v4.b32 [{addr}+{off}], {{{', '.join(regs)}}};")
        if self.emu is not None:
            sm = self.emu["smem"]
            a = self.V[addr].astype(np.int64) + off
            assert np.all(a % 16 == 0)
            for k, r in enumerate(regs):
                v = self.V[r]
                for byte in range(4):
                    sm[a + 4 * k + byte] = ((v >> np.uint32(8 * byte)) & np.uint32(0xFF)).astype(np.uint8)

    def ldsv4(self, addr, off):
        ds = [self.new() for _ in range(4)]
        self.emit(f"ld.shared.v4.b32 {{{', '.join(ds)}}}, [{addr}+{off}];")
        if self.emu is not None:
            sm = self.emu["smem"]
            a = self.V[addr].astype(np.int64) + off
            assert np.all(a % 16 == 0)
            for k, d in enumerate(ds):
                self.V[d] = sum(
                    sm[a + 4 * k + b].astype(np.uint32) << np.uint32(8 * b) for b in range(4)
                ).astype(np.uint32)
        return ds

    def split16(self, a):
        lo, hi = self.new("b16"), self.new("b16")
        self.emit(f"mov.b32 {{{lo}, {hi}}}, {a};")
        if self.emu is not None:
            v = self.val(a)
            self.V[lo] = (v & np.uint32(0xFFFF)).astype(np.uint32)
            self.V[hi] = (v >> np.uint32(16)).astype(np.uint32)
        return lo, hi

    def sts16(self, addr, h, off=0):
        self.emit(f"st.shared.u16 [{addr}+{off}], {h};")
        if self.emu is not None:
            a = self.V[addr].astype(np.int64) + off
            v = self.V[h]
            sm = self.emu["smem"]
            sm[a] = (v & 0xFF).astype(np.uint8)
            sm[a + 1] = (v >> 8).astype(np.uint8)

    def special(self, name):
        d = self.new()
        self.emit(f"mov.u32 {d}, {name};")
        if self.emu is not None:
            self.V[d] = self.emu["special"][name].astype(np.uint32)
        return d

    def lds32(self, addr, off, p):
        d = self.new()
        self.emit(f"@{p} ld.shared.u32 {d}, [{addr}+{off}];")
        if self.emu is not None:
            sm = self.emu["smem"]
            a = np.where(self.V[p], self.V[addr].astype(np.int64) + off, 0)
            v = sum(sm[a + k].astype(np.uint32) << np.uint32(8 * k) for k in range(4))
            self.V[d] = np.where(self.V[p], v, 0).astype(np.uint32)
        return d

    def gptr(self, base, off32):  # 64-bit base + sign-extended 32-bit offset
        d, e = self.new("b64"), self.new("b64")
        self.emit(f"cvt.s64.s32 {d}, {off32};")
        self.emit(f"add.s64 {e}, {d}, {base};")
        if self.emu is not None:
            self.V[e] = self.V[base].astype(np.int64) + self.V[off32].astype(np.int32).astype(np.int64)
        return e

    def stg32(self, addr, off, v, p):
        self.emit(f"@{p} st.global.u32 [{addr}+{off}], {v};")
        if self.emu is not None:
            g = self.emu["gmem"]
            m = self.V[p]
            a = self.V[addr][m] + off
            assert np.all(a % 4 == 0)
            g[a // 4] = self.V[v][m]

    def stgv(self, addr, vals, p):
        n = len(vals)
        self.emit(f"@{p} st.global.v{n}.b32 [{addr}], {{{', '.join(vals)}}};")
        if self.emu is not None:
            g = self.emu["gmem"]
            m = self.V[p]
            a = self.V[addr][m]
            for k, v in enumerate(vals):
                g[(a + 4 * k) // 4] = self.V[v][m]

    def text(self, body_prefix=""):
        decl = []
        for kind, pre in (("b32", "t"), ("pred", "p"), ("b16", "h"), ("b64", "d")):
            if self.cnt[kind]:
                decl.append(f".reg .{kind} {pre}<{self.cnt[kind] + 1}>;")
        return "{\n" + "\n".join(decl + self.lines) + "\n}"


def search(g, words, nbits, need):
    """Largest thr (nbits wide) with count(lane >= thr) >= need over byte lanes (0x80 | value); also the count at the
    last rejected candidate (= count(lane >= thr + 1)), 0 if none was rejected. One running sum per pass (4
    independent partial sums measured 1 % slower on H100, results/kernels/NOTES.md round 4)."""
    thr = g.mov(0)
    crej = g.mov(0)
    for b in reversed(range(nbits)):
        cand = g.or_(thr, 1 << b)
        c4 = g.mul(cand, 0x01010101)
        acc = None
        for w in words:
            s = g.shr(g.and_(g.sub(w, c4), 0x80808080), 7)
            acc = s if acc is None else g.add(acc, s)
        tot = g.shr(g.mul(acc, 0x01010101), 24)
        p = g.setp("ge", tot, need)
        thr = g.selp(cand, thr, p)
        crej = g.selp(crej, tot, p)
    return thr, crej


def row_stride(d: int) -> int:
    """Bytes between two rows in the shared-memory transpose of the coalesced load (an odd number of 16-B units)."""
    return 2 * d + 16


def warp_smem_bytes(d: int, slot: int, coalesced: bool) -> int:
    """Shared memory one warp uses: its 32 value slots, or (coalesced load) its 32 transposed rows if larger."""
    return 32 * max(smem_stride(slot), row_stride(d) if coalesced else 0)


def build(g, D, KEEP, SLOT, STRIDE, coalesced=False):
    """Operands: $0 out (dummy), $1 row ptr (clamped to the last row), $2 bitmap ptr, $3 value-slot ptr, $4 rows left
    (n_tok - r), $5 dep, $6 row ptr (unclamped; rows of one warp are contiguous when ``coalesced``)."""
    NWD, G = D // 2, D // 32
    rem = "$4"
    tid = g.special("%tid.x")
    lane = g.special("%laneid")
    smb = g.special("global_smem")
    wbytes = warp_smem_bytes(D, SLOT, coalesced)
    wb = g.add(smb, g.mul(g.sub(tid, lane), wbytes // 32))  # this warp's shared area
    nvw = g.add(rem, lane)  # valid rows counted from the warp's row 0
    R = []
    if coalesced:
        # the warp's 32 rows are one contiguous block: 16-B chunk lane + 32 i of it per load, transposed through
        # shared memory (rows RS bytes apart, an odd number of 16-B units: conflict-free row reads)
        RS, CPR = row_stride(D), D // 8  # chunks per row
        gb = g.gptr("$6", g.sub(g.mul(lane, 16), g.mul(lane, 2 * D)))  # warp row 0 + 16 * lane
        tb = g.add(wb, g.add(g.mul(g.shr(lane, CPR.bit_length() - 1), RS), g.mul(g.and_(lane, CPR - 1), 16)))
        for i in range(NWD // 4):
            rows_i = i * (32 // CPR)
            pv = g.setp("gt", nvw, g.add(g.shr(lane, CPR.bit_length() - 1), rows_i), "s32")
            g.stsv4(tb, g.ldgv4p(gb, 512 * i, pv), rows_i * RS)
        g.emit("bar.warp.sync -1;")
        rb = g.add(wb, g.mul(lane, RS))
        for i in range(NWD // 4):
            R += g.ldsv4(rb, 16 * i)
        g.emit("bar.warp.sync -1;")
    else:
        for i in range(NWD // 4):
            R += g.ldv4("$1", 16 * i)
    # byte words: W[m][c'] holds channels 32m + c' + 8k in byte k (k = 0..3)
    Wh, Wl = [], []
    for m in range(G):
        wh, wl = [None] * 8, [None] * 8
        for p in range(4):
            j = 16 * m + p
            xh, yh = g.prmt(R[j], R[j + 4], 0x7531), g.prmt(R[j + 8], R[j + 12], 0x7531)
            xl, yl = g.prmt(R[j], R[j + 4], 0x6420), g.prmt(R[j + 8], R[j + 12], 0x6420)
            wh[2 * p], wh[2 * p + 1] = g.prmt(xh, yh, 0x6420), g.prmt(xh, yh, 0x7531)
            wl[2 * p], wl[2 * p + 1] = g.prmt(xl, yl, 0x6420), g.prmt(xl, yl, 0x7531)
        Wh.append(wh)
        Wl.append(wl)
    A = [[g.or_(w, 0x80808080) for w in wh] for wh in Wh]
    # stage 1: key bits 14..8
    H, cgt_h = search(g, [a for row in A for a in row], 7, KEEP)
    H4 = g.mul(H, 0x01010101)
    H14 = g.add(H4, 0x01010101)
    E, Gt, B, B0 = [], [], [], []
    for m in range(G):
        e_r, g_r, b_r, b0w = [], [], [], None
        for c in range(8):
            dge, dgt = g.sub(A[m][c], H4), g.sub(A[m][c], H14)
            e = g.and_(g.and_(dge, g.not_(dgt)), 0x80808080)
            gt = g.and_(dgt, 0x80808080)
            em = g.sub(e, g.shr(e, 7))
            b = g.or_(g.and_(g.shr(Wl[m][c], 1), em), 0x80808080)
            e_r.append(e), g_r.append(gt), b_r.append(b)
            b0 = g.and_(Wl[m][c], 0x01010101)  # key bit 0 of channels c + 8k -> bitmap bits c + 8k
            b0 = g.shl(b0, c) if c else b0
            b0w = b0 if b0w is None else g.add(b0w, b0)
        E.append(e_r), Gt.append(g_r), B.append(b_r), B0.append(b0w)
    # stage 2: key bits 7..1 of the keys whose bits 14..8 equal H (others: 0, never counted)
    need2 = g.sub(KEEP, cgt_h)
    M, crej2 = search(g, [b for row in B for b in row], 7, need2)
    need14 = g.sub(need2, crej2)  # KEEP - count(key >> 1 > (H, M))
    M4 = g.mul(M, 0x01010101)
    M14 = g.add(M4, 0x01010101)
    GT, EQ = [], []
    for m in range(G):
        gtw = eqw = None
        for c in range(8):
            d0, d1 = g.sub(B[m][c], M4), g.sub(B[m][c], M14)
            gtf = g.or_(Gt[m][c], g.and_(E[m][c], d1))
            eqf = g.and_(E[m][c], g.and_(d0, g.not_(d1)))
            if c < 7:
                gtf, eqf = g.shr(gtf, 7 - c), g.shr(eqf, 7 - c)
            gtw = gtf if gtw is None else g.add(gtw, gtf)
            eqw = eqf if eqw is None else g.add(eqw, eqf)
        GT.append(gtw), EQ.append(eqw)
    E1 = [g.and_(EQ[m], B0[m]) for m in range(G)]
    E0 = [g.and_(EQ[m], g.not_(B0[m])) for m in range(G)]
    n1 = None
    for m in range(G):
        c = g.popc(E1[m])
        n1 = c if n1 is None else g.add(n1, c)
    pa = g.setp("ge", n1, need14)
    base = [g.selp(GT[m], g.or_(GT[m], E1[m]), pa) for m in range(G)]
    X = [g.selp(E1[m], E0[m], pa) for m in range(G)]
    n = g.selp(need14, g.sub(need14, n1), pa)
    s = [g.mov(0)]
    for m in range(G):
        s.append(g.add(s[m], g.popc(X[m])))
    xs, ns = g.mov(0), g.mov(0)
    for m in range(G):
        pm = g.setp("lt", s[m], n)
        xs = g.selp(X[m], xs, pm)
        ns = g.selp(g.sub(n, s[m]), ns, pm)
    q = g.mov(0)
    for step in (16, 8, 4, 2, 1):
        t = g.add(q, step)
        mk = g.sub(g.shl(1, t), 1)
        pl = g.setp("lt", g.popc(g.and_(xs, mk)), ns)
        q = g.selp(t, q, pl)
    res = g.and_(xs, g.sub(g.shl(2, q), 1))
    K = []
    for m in range(G):
        pf = g.setp("le", s[m + 1], n)
        pp = g.setp("lt", s[m], n)
        part = g.selp(res, 0, pp)
        K.append(g.or_(base[m], g.selp(X[m], part, pf)))
    pv = g.setp("gt", rem, 0, "s32")
    g.stgv("$2", K, pv)
    # scatter the kept values (channel order) into this thread's smem row: write every value, advance if kept
    sb = g.add(wb, g.mul(lane, STRIDE))
    ptr = g.mov(sb)
    for j in range(NWD):
        hl, hh = g.split16(R[j])
        for half, h in enumerate((hl, hh)):
            c = 2 * j + half
            g.sts16(ptr, h)
            if c < D - 1:
                t = g.and_(K[c >> 5], 1 << (c & 31))
                g.padd(ptr, 2, g.setp("ne", t, 0))
    if SLOT > KEEP:
        z = g.new("b16")
        g.emit(f"mov.b16 {z}, 0;")
        if g.emu is not None:
            g.V[z] = np.zeros(g.emu["n"], np.uint32)
        for pos in range(KEEP, SLOT):
            g.sts16(sb, z, 2 * pos)
    g.emit("bar.warp.sync -1;")
    # copy out: lane l moves word l of each of the warp's 32 rows (coalesced 4-byte stores)
    WPR = SLOT // 2
    rd = g.add(wb, g.mul(lane, 4))  # warp's smem row 0 + 4 * lane
    goff = g.sub(g.mul(lane, 4), g.mul(lane, 2 * SLOT))
    ga = g.gptr("$3", goff)
    for cb in range((WPR + 31) // 32):
        plane = g.setp("lt", lane, WPR - 32 * cb)
        for row in range(32):
            pr = g.new("pred")
            g.emit(f"setp.gt.and.s32 {pr}, {nvw}, {row}, {plane};")
            if g.emu is not None:
                g.V[pr] = (g.V[nvw].astype(np.int32) > row) & g.V[plane]
            v = g.lds32(rd, row * STRIDE + 128 * cb, plane)
            g.stg32(ga, row * 2 * SLOT + 128 * cb, v, pr)
    g.emit("mov.u32 $0, $5;")
    return g


def smem_stride(slot: int) -> int:
    """Bytes between two rows' slots in shared memory: room for the overwritten tail value, an odd word count
    (the 32 threads' running positions spread over the banks)."""
    return 2 * slot + 4


@functools.cache
def make_asm(d: int, keep: int, slot: int, coalesced: bool = False) -> str:
    """The inline-asm body for head_dim ``d``, ``keep`` values per row, ``slot`` value slots (fp16/bf16).

    ``coalesced``: the warp's rows are one contiguous block, loaded coalesced and transposed in shared memory. The
    row stays in registers through the search (re-reading it for the pack was slower on H100, round 4)."""
    return build(Gen(), d, keep, slot, smem_stride(slot), coalesced).text()


def emulate(
    bits16: np.ndarray,
    keep: int,
    slot: int,
    n_tok: int | None = None,
    warps: int = 1,
    coalesced: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the generated program on uint16 rows ``bits16`` [N, D] (N a multiple of 32 * warps) in numpy.

    Returns (bitmap words uint32 [N, D/32], value slots uint16 [N, slot]); rows >= ``n_tok`` are not written."""
    n, d = bits16.shape
    groups = d // 32
    n_tok = n if n_tok is None else n_tok
    stride = smem_stride(slot)
    w32 = np.ascontiguousarray(bits16).view(np.uint32)
    idx = np.arange(n)
    blk = 32 * warps
    emu = dict(
        n=n,
        R=[w32[:, j].copy() for j in range(d // 2)],
        smem=np.zeros(n * warp_smem_bytes(d, slot, True) // 32 + 4096, np.uint8),
        xmem=np.concatenate([w32.reshape(-1), np.zeros(4096, np.uint32)]),
        xb=1 << 40,
        gmem=np.zeros(n * groups + n * slot // 2, np.uint32),
        special={
            "%tid.x": idx % blk,
            "%laneid": idx % 32,
            "global_smem": (idx // blk) * blk * warp_smem_bytes(d, slot, coalesced) // 32,
        },
    )
    g = Gen(emu)
    g.V["$2"] = (idx * groups * 4).astype(np.int64)
    g.V["$3"] = (n * groups * 4 + idx * slot * 2).astype(np.int64)
    g.V["$4"] = (n_tok - idx).astype(np.uint32)
    g.V["$5"] = np.zeros(n, np.uint32)
    g.V["$6"] = ((1 << 40) + idx * d * 2).astype(np.int64)
    build(g, d, keep, slot, stride, coalesced)
    gm = emu["gmem"]
    return gm[: n * groups].reshape(n, groups), gm[n * groups :].view(np.uint16).reshape(n, slot)
