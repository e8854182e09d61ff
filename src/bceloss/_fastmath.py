"""Branch-free exp and log for the fused kernels, in a form LLVM vectorises.

numba compiles `math.exp` and `math.log1p` to calls of the C library, one element at a
time. These are the textbook alternative: a range reduction to a small interval, a
polynomial there, and the exponent put back with integer arithmetic on the float's bits.
Every branch is a select, so a loop calling them becomes SIMD code. Each function is
within 2 ulp of the exact value (tests/test_kernels.py and, for the pieces the focal loss
uses, tests/test_kernels_focal.py measure it).

The functions are generic over float32 and float64: every literal comes from
`constants(x)`, typed like x, so nothing is promoted to float64 by accident (numba types a
Python literal as float64). The polynomial coefficients come from
`benchmarks/fit_polynomials.py`.
"""

from __future__ import annotations

import functools
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic, overload

# Fused multiply-add is allowed (it only removes roundings); nothing is reassociated, so the
# exact error terms below, such as (1 - u) - x, are computed as written.
FLAGS = {"contract"}

# Chebyshev fits (highest degree first), see benchmarks/fit_polynomials.py.
# Q(r) with exp(r) = 1 + r + r^2 Q(r) on |r| <= ln(2)/2:
EXP_TAIL = {
    np.float32: (
        1.3926176119935578884e-3,
        8.3631730745137109028e-3,
        4.1666554662050533982e-2,
        1.666657702559798819e-1,
        5.0e-1,
    ),
    np.float64: (
        2.5100375832561233664e-8,
        2.7620075879983366586e-7,
        2.7557268480310025526e-6,
        2.4801521322368693266e-5,
        1.9841269863040545271e-4,
        1.3888888917196719077e-3,
        8.3333333333300644495e-3,
        4.1666666666624161903e-2,
        1.6666666666666667452e-1,
        5.0000000000000010211e-1,
    ),
}
# T(z) with atanh(s) = s + s z T(z), z = s^2 in [0, 1/9]:
ATANH_TAIL = {
    np.float32: (
        1.1612164612011674416e-1,
        1.0853287900440186323e-1,
        1.4296178997151418861e-1,
        1.9999853165964858701e-1,
        3.3333333660263706234e-1,
    ),
    np.float64: (
        7.8152889004614252231e-2,
        3.7460718977753836504e-2,
        5.422589197440007411e-2,
        5.86713953065159873e-2,
        6.6675893157246279183e-2,
        7.6922719824302746434e-2,
        9.0909099489813571913e-2,
        1.1111111099118385279e-1,
        1.4285714285800049646e-1,
        1.9999999999999761253e-1,
        3.3333333333333333443e-1,
    ),
}
# P(e) with log1p(e) = e P(e) on [0, 1], float32 only (float64 would need degree 21):
LOG1P_UNIT_F32 = (
    -3.1760570184319596946e-3,
    1.95425272610141015e-2,
    -5.6373612830107328154e-2,
    1.0543623795419526143e-1,
    -1.5269667074363287768e-1,
    1.966327425720480527e-1,
    -2.4951616262872074329e-1,
    3.3329710498917748649e-1,
    -4.9999892648063278673e-1,
    9.999999946562919754e-1,
)
# ln 2 split so that k * LN2_HI is exact for the k that occur (Cody and Waite).
LN2_HI = {np.float32: 0.693145751953125, np.float64: 6.93147180369123816490e-01}
LN2_LO = {np.float32: 1.428606765330187e-06, np.float64: 1.90821492927058770002e-10}
# exp(-a) rounds to 0 beyond these (half the smallest subnormal is exp(-103.97), exp(-745.13))
EXP_ARG_MAX = {np.float32: 104.0, np.float64: 746.0}
# (integer type, mantissa bits, exponent bias) of the float's bit pattern
LAYOUT = {np.float32: (np.int32, 23, 127), np.float64: (np.int64, 52, 1023)}


@intrinsic
def from_bits(typingctx, bits):
    """The float whose bit pattern is the int32 (int64) `bits`."""
    width = {types.int32: 32, types.int64: 64}.get(bits)
    if width is None:
        return None
    ftype = types.float32 if width == 32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(ftype))

    return ftype(bits), codegen


@intrinsic
def to_bits(typingctx, value):
    """The bit pattern of a float32 (float64) as an int32 (int64)."""
    itype = {types.float32: types.int32, types.float64: types.int64}.get(value)
    if itype is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(itype))

    return itype(value), codegen


@intrinsic
def half_to_float32(typingctx, bits):
    """The float16 whose bit pattern is the uint16 `bits`, widened to float32 (exact)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def float_to_half(typingctx, value):
    """The bit pattern (uint16) of a float32 rounded to float16 (to nearest even): one
    instruction with F16C. (From float64 LLVM calls __truncdfhf2, which numba's JIT does not
    link: the process aborts. `float32_round_to_odd` comes first there.)"""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(value), codegen


@njit(cache=True)
def float32_round_to_odd(value):
    """float64 `value` as a float32 rounded to odd: truncated toward zero, its last bit set
    when that was inexact. Rounding the result to a format of at most 22 significant bits
    (float16: 11, bfloat16: 8) to nearest even rounds `value` itself correctly: no double
    rounding (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved
    algorithms using rounding to odd", 2008). Overflow keeps the largest float32, odd, which
    rounds to inf."""
    f = np.float32(value)
    back = np.float64(f)
    if back == value or np.isnan(value):
        return f
    bits = to_bits(f)
    if abs(back) > abs(value):  # rounded away from zero: one step back (sign and magnitude)
        bits = np.int32(bits - 1)  # (numba widens int32 arithmetic to int64)
    return from_bits(np.int32(bits | 1))


@njit(cache=True)
def bfloat16_to_float32(bits):
    """bfloat16 (its bits as int16) to float32: the upper half of a float32 (exact)."""
    return from_bits(np.int32((np.int32(bits) & 0xFFFF) << 16))


@njit(cache=True)
def float32_to_bfloat16(value):
    """The bits (int16) of float32 `value` rounded to bfloat16, to nearest even; NaN stays NaN."""
    b = np.int64(to_bits(value)) & 0xFFFFFFFF
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    quiet = (b >> 16) | 0x40
    return np.int16(np.int32(quiet if np.isnan(value) else rounded) & 0xFFFF)


Constants = namedtuple(
    "Constants",
    "zero one two half inf tiny ln2_hi ln2_lo log2e exp_arg_max sqrt2 exp_tail atanh2_tail "
    "mant bias mant_mask one_bits subnormal_shift scale_up round_magic deep_shift deep_scale",
)


def _constants(F) -> Constants:
    itype, mant, bias = LAYOUT[F]
    return Constants(
        zero=F(0),
        one=F(1),
        two=F(2),
        half=F(0.5),
        inf=F(np.inf),
        tiny=F(np.finfo(F).tiny),
        ln2_hi=F(LN2_HI[F]),
        ln2_lo=F(LN2_LO[F]),
        log2e=F(1 / np.log(2)),
        exp_arg_max=F(EXP_ARG_MAX[F]),
        sqrt2=F(np.sqrt(2)),
        exp_tail=tuple(F(c) for c in EXP_TAIL[F]),
        atanh2_tail=tuple(F(2 * c) for c in ATANH_TAIL[F]),  # 2 T(z)
        mant=itype(mant),
        bias=itype(bias),
        mant_mask=itype((1 << mant) - 1),
        one_bits=itype(bias << mant),
        subnormal_shift=F(mant + 1),
        scale_up=F(2.0 ** (mant + 1)),
        round_magic=F(1.5 * 2.0**mant),
        deep_shift=itype(64),
        deep_scale=F(2.0**-64),
    )


_CONSTANTS = {types.float32: _constants(np.float32), types.float64: _constants(np.float64)}


def constants(like):
    """The `Constants` of the float type of `like`: every literal of the math, typed."""


@overload(constants)
def _constants_for(like):
    c = _CONSTANTS.get(like)
    if c is not None:
        return lambda like: c
    return None


# The scaling functions' constants, apart: a larger `Constants` (its tuple is built wherever
# it is used) made LLVM leave the float64 BCE kernel's indexing scalar, at 2.4x the time.
Scaling = namedtuple("Scaling", "parts_arg_max expm1_n_max pow2_neg_max tiny_shift tiny_scale")


def _scaling(F) -> Scaling:
    itype, mant, bias = LAYOUT[F]
    return Scaling(
        # exp_neg_parts' n stays below 2^9 (float32), 2^21 (float64) up to here: n ln2_hi exact
        parts_arg_max=F(2 * EXP_ARG_MAX[F]),
        expm1_n_max=itype(mant + 2),
        # v 2^-j, v < 2, rounds to 0 beyond this j (half the smallest subnormal is 2^-(bias+mant))
        pow2_neg_max=itype(bias + mant + 2),
        # 2^tiny_shift lifts every subnormal, and every number down to 2^-(mant + 2) times the
        # smallest subnormal, to a normal number
        tiny_shift=itype(2 * mant + 2),
        tiny_scale=F(2.0 ** (2 * mant + 2)),
    )


_SCALING = {types.float32: _scaling(np.float32), types.float64: _scaling(np.float64)}


def scaling(like):
    """The `Scaling` constants of the float type of `like`."""


@overload(scaling)
def _scaling_for(like):
    s = _SCALING.get(like)
    return None if s is None else (lambda like: s)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def horner(z, coeffs):
    """coeffs[0] z^n + ... + coeffs[n], highest degree first."""
    acc = coeffs[0]
    for c in coeffs[1:]:
        acc = acc * z + c
    return acc


def as_int(value, like):
    """`value` (a float or an integer) converted to the integer type of `like`'s bits."""


def as_float(value, like):
    """The integer `value` converted to the float type of `like` (numba would widen an int32
    plus a float32 to float64, and with it all the arithmetic that follows)."""


def _converting_to(target_by_float):
    """An overload converting `value` to the type `target_by_float` gives like's float type."""

    def impl(value, like):
        target = target_by_float.get(like)
        return None if target is None else (lambda value, like: target(value))

    return impl


overload(as_int)(_converting_to({types.float32: np.int32, types.float64: np.int64}))
overload(as_float)(_converting_to({types.float32: np.float32, types.float64: np.float64}))


# inline="always" (numba's IR) for exp_neg_parts and log_parts: exp_neg and log then compile
# to the LLVM code they had before they shared these
@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def exp_neg_parts(t):
    """(P, n) with exp(-t) = 2^-n (1 + P) for t in [0, parts_arg_max]: n = round(t / ln2), an
    integer of the bits' type (`as_int`), and P = expm1(n ln2 - t), |P| < 0.42; NaN P for NaN."""
    c = constants(t)
    # exp(-t) = 2^-n exp(r), n = round(t / ln2), r = n ln2 - t in [-ln2 / 2, ln2 / 2].
    # Adding 1.5 2^mant rounds t / ln2 to an integer and leaves it in the low bits of nm.
    nm = t * c.log2e + c.round_magic
    n = nm - c.round_magic
    r = (n * c.ln2_hi - t) + n * c.ln2_lo
    return r + r * r * horner(r, c.exp_tail), to_bits(nm) - to_bits(c.round_magic)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def exp_neg(a):
    """exp(-a) for a in [0, inf]; NaN for NaN."""
    c = constants(a)
    t = c.exp_arg_max if a > c.exp_arg_max else a  # noqa: FURB136 (NaN passes, min() not)
    pm1, ni = exp_neg_parts(t)
    return scaled_down(c.one + pm1, ni)


@intrinsic
def _ldexp(typingctx, v, k):
    """v 2^k, rounded once (LLVM's ldexp): a single vscalef instruction per vector on AVX-512,
    a call of the C library per element elsewhere."""
    if v not in (types.float32, types.float64) or not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ftype, i32 = context.get_value_type(signature.return_type), ir.IntType(32)
        if k.bitwidth > 32:
            k32 = builder.trunc(args[1], i32)
        else:
            k32 = (builder.sext if k.signed else builder.zext)(args[1], i32)
        fnty = ir.FunctionType(ftype, [ftype, i32])
        fn = builder.module.declare_intrinsic("llvm.ldexp", [ftype, i32], fnty)
        return builder.call(fn, [args[0], k32])

    return v(v, k), codegen


_LDEXP_PROBE = """
declare <16 x float> @llvm.ldexp.v16f32.v16i32(<16 x float>, <16 x i32>)
define <16 x float> @probe(<16 x float> %v, <16 x i32> %k) {
  %r = call <16 x float> @llvm.ldexp.v16f32.v16i32(<16 x float> %v, <16 x i32> %k)
  ret <16 x float> %r
}
"""


@functools.cache
def _vector_scaling() -> bool:
    """Whether LLVM turns a vector ldexp into vscalef (AVX-512) for the CPU numba compiles
    for: asked of LLVM itself, on a probe function. Older LLVMs (before 17) have no ldexp, and
    without AVX-512 a vector ldexp becomes a C library call per element."""
    import llvmlite.binding as ll
    from numba.core import codegen, config

    if ll.llvm_version_info < (17,):
        return False
    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES
    if features is None:
        features = codegen.get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    target = ll.Target.from_triple(ll.get_process_triple())
    machine = target.create_target_machine(cpu=cpu, features=features, opt=2)
    module = ll.parse_assembly(_LDEXP_PROBE)
    module.verify()
    return "vscalef" in machine.emit_assembly(module)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def scaled_down_by_bits(v, j):
    """`scaled_down` without vscalef: powers of 2 built from their bits."""
    c = constants(v)
    # 2^-j from its bits; where it would be subnormal, 2^-(j - 64) times 2^-64 instead, so the
    # one rounding happens in the last product.
    deep = j > c.bias - 1
    j = j - c.deep_shift if deep else j
    scaled = v * from_bits(as_int((c.bias - j) << c.mant, v))
    return scaled * c.deep_scale if deep else scaled


def scaled_down(v, j):
    """v 2^-j for v in [1/2, 2] and an integer j of the bits' type (`as_int`) in [0, bias +
    63], rounded once: exact where the result is normal, correctly rounded below."""


@overload(scaled_down, jit_options={"fastmath": FLAGS, "error_model": "numpy"})
def _scaled_down(v, j):
    if v not in (types.float32, types.float64):
        return None
    if _vector_scaling():  # 1 instruction instead of 9 in the kernels' hottest loops
        return lambda v, j: _ldexp(v, -j)
    return lambda v, j: scaled_down_by_bits(v, j)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def expm1_from_parts(pm1, n):
    """expm1(-t) = 2^-n (1 + P) - 1 from (P, n) = `exp_neg_parts(t)`."""
    c = constants(pm1)
    # (2^-n - 1) + 2^-n P: 2^-n - 1 is exact for n <= mant + 1 and 2^-n P an exact scaling,
    # so one rounding, and no cancellation (n = 0 leaves P itself, n >= 1 a result below
    # -1/4). From n = mant + 3 on, 2^-n (1 + P) is below half the spacing above -1: -1.
    top = scaling(pm1).expm1_n_max
    far = n > top
    scale = from_bits(as_int((c.bias - (top if far else n)) << c.mant, pm1))
    res = -c.one if far else (scale - c.one) + scale * pm1
    return pm1 if np.isnan(pm1) else res


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def ldexp_neg(v, j):
    """v 2^-j for v in [1/2, 2] and an integer j >= 0 of the bits' type (`as_int`), rounded
    once: exact where the result is normal, 0 where it is below half the smallest subnormal."""
    j = max(min(j, scaling(v).pow2_neg_max), as_int(0, v))  # integers: no NaN to let through
    return scaled_down(v, j)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def log1p_small(f):
    """log1p(f) for f with |f / (2 + f)| <= 1/3, e.g. f in [sqrt(1/2) - 1, 1]."""
    c = constants(f)
    # log1p(f) = 2 atanh(s) = 2s + s R, s = f / (2 + f), R = 2 z T(z), z = s^2 (fdlibm's
    # rearrangement): 2s = f - s f and s f = hfsq (1 - s), hfsq = f^2 / 2, give
    #   log1p(f) = f - (hfsq - s (hfsq + R)),
    # where f is exact and the rounding of s only touches the small correction.
    s = f / (c.two + f)
    z = s * s
    hfsq = c.half * f * f
    return f - (hfsq - s * (hfsq + z * horner(z, c.atanh2_tail)))


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def log_parts(v):
    """(k, f) with v = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)], k a float, for finite
    v > 0 (subnormals included): log(v) = k ln2 + log1p_small(f), f exact."""
    c = constants(v)
    sub = v < c.tiny
    v1 = v * c.scale_up if sub else v
    bits = to_bits(v1)
    k = (bits >> c.mant) - c.bias
    kf = as_float(k, v) - (c.subnormal_shift if sub else c.zero)
    m = from_bits(as_int((bits & c.mant_mask) | c.one_bits, v))
    big = m > c.sqrt2
    m = m * c.half if big else m
    kf = kf + c.one if big else kf
    return kf, m - c.one  # exact: m is within a factor 2 of 1 (Sterbenz)


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def log(v):
    """log(v) for v in [0, inf]: -inf at 0, NaN for NaN."""
    c = constants(v)
    # v = 2^k m with m in [sqrt(1/2), sqrt(2)); log(v) = k ln2 + log1p(m - 1)
    kf, f = log_parts(v)
    res = kf * c.ln2_hi + (log1p_small(f) + kf * c.ln2_lo)
    res = -c.inf if v == c.zero else res
    res = c.inf if v == c.inf else res
    return v if np.isnan(v) else res


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def log1p_neg(x):
    """log1p(-x) = log(1 - x) for x in [0, 1]: -inf at 1."""
    c = constants(x)
    # 1 - x = u + e exactly, with e = (1 - u) - x (Fast2Sum, |1| >= |x|), so
    # log(1 - x) = log(u) + log1p(e / u) = log(u) + e / u to within (e / u)^2.
    u = c.one - x
    e = (c.one - u) - x
    return log(u) + (e / u if u > c.zero else c.zero)


_LOG1P_UNIT_F32 = tuple(np.float32(c) for c in LOG1P_UNIT_F32)


def log1p_unit(e):
    """log1p(e) for e in [0, 1] (exp(-|x|) in the logits form)."""


@overload(log1p_unit, jit_options={"fastmath": FLAGS, "error_model": "numpy"})
def _log1p_unit(e):
    # float32: a polynomial, no division (the hot loop of the float32 kernels); float64:
    # log1p_small, whose division costs less than the degree-21 polynomial it would need
    if e == types.float32:
        return lambda e: e * horner(e, _LOG1P_UNIT_F32)
    if e == types.float64:
        return lambda e: log1p_small(e)
    return None


def plus_log1p_unit(t, e):
    """t + log1p(e) for e in [0, 1]: `log1p_unit`'s last product fused into the add, always.
    (Left to LLVM, it fuses them where nothing else uses log1p(e) and not where the target's
    gradient does: the loss would then depend, by an ulp, on the gradients asked for.)"""


@overload(plus_log1p_unit, jit_options={"fastmath": FLAGS, "error_model": "numpy"})
def _plus_log1p_unit(t, e):
    if e == types.float32 and t == e:
        return lambda t, e: mul_add(e, horner(e, _LOG1P_UNIT_F32), t)
    if e == types.float64 and t == e:
        return lambda t, e: t + log1p_small(e)
    return None


@intrinsic
def mul_add(typingctx, a, b, c):
    """a b + c (floats of one type) as llvm.fmuladd: one fused instruction wherever the CPU
    has FMA, a multiply and an add elsewhere, the same in every loop it is compiled into."""
    if a not in (types.float32, types.float64) or b != a or c != a:
        return None

    def codegen(context, builder, signature, args):
        t = context.get_value_type(signature.return_type)
        fnty = ir.FunctionType(t, [t, t, t])
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [t], fnty)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def times(a, b, c):
    """a b for b >= 0 (not NaN), reading 0 * inf as 0: a limit as a logit goes to +-inf
    (`c`: the `constants` of the type)."""
    return c.zero if a == c.zero else a * b


@njit(fastmath=FLAGS, cache=True, error_model="numpy")
def weighted(w, v, c):
    """w v, reading 0 * inf as 0 and keeping NaN, as `_formulas._mul_limit`."""
    return c.zero if (w == c.zero and not np.isnan(v)) else w * v
