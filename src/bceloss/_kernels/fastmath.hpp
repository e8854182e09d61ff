// Branch-free exp and log for the fused kernels, and the float16/bfloat16 storage
// conversions: the C++ twin of _fastmath.py, operation for operation.
//
// The textbook alternative to the C library's exp and log1p: a range reduction to a small
// interval, a polynomial there, and the exponent put back with integer arithmetic on the
// float's bits. Every branch is a select, so a loop calling them vectorises. Each function is
// within 2 ulp of the exact value.
//
// Everything is generic over float and double: every literal comes from Constants<F>, typed
// F, so nothing is promoted to double by accident. Compiled without contraction
// (-ffp-contract=off): a fused multiply-add is written as std::fma where the Python twin
// fuses (horner, mul_add); nothing else is fused or reassociated, so the exact error terms
// below, such as (1 - u) - x, are computed as written. No -ffast-math: NaN and inf pass.
#ifndef BCELOSS_FASTMATH_HPP
#define BCELOSS_FASTMATH_HPP

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__GNUC__) || defined(__clang__)
#define BCELOSS_INLINE static inline __attribute__((always_inline))
#else
#define BCELOSS_INLINE static inline
#endif

namespace bceloss {

// ---------------------------------------------------------------------------------------
// Constants per type, from the same numbers as _fastmath._constants and _scaling.

template <class F>
struct Constants;

template <>
struct Constants<float> {
    using Int = int32_t;  // the integer type of the float's bits
    using UInt = uint32_t;
    static constexpr float zero = 0.0f;
    static constexpr float one = 1.0f;
    static constexpr float two = 2.0f;
    static constexpr float half = 0.5f;
    static constexpr float inf = std::numeric_limits<float>::infinity();
    static constexpr float nan = std::numeric_limits<float>::quiet_NaN();
    static constexpr float tiny = std::numeric_limits<float>::min();
    // ln 2 split so that k ln2_hi is exact for the k that occur (Cody and Waite)
    static constexpr float ln2_hi = float(0.693145751953125);
    static constexpr float ln2_lo = float(1.428606765330187e-06);
    static constexpr float log2e = float(1.4426950408889634);  // 1 / np.log(2)
    // exp(-a) rounds to 0 beyond this (half the smallest subnormal is exp(-103.97))
    static constexpr float exp_arg_max = 104.0f;
    static constexpr float sqrt2 = float(1.4142135623730951);  // np.sqrt(2)
    // Q(r) with exp(r) = 1 + r + r^2 Q(r) on |r| <= ln(2)/2 (Chebyshev fit, highest first)
    static constexpr float exp_tail[5] = {
        float(1.3926176119935578884e-3),
        float(8.3631730745137109028e-3),
        float(4.1666554662050533982e-2),
        float(1.666657702559798819e-1),
        float(5.0e-1),
    };
    // P(e) with log1p(e) = e P(e) on [0, 1] (float only: double would need degree 21)
    static constexpr float log1p_unit[10] = {
        float(-3.1760570184319596946e-3), float(1.95425272610141015e-2),
        float(-5.6373612830107328154e-2), float(1.0543623795419526143e-1),
        float(-1.5269667074363287768e-1), float(1.966327425720480527e-1),
        float(-2.4951616262872074329e-1), float(3.3329710498917748649e-1),
        float(-4.9999892648063278673e-1), float(9.999999946562919754e-1),
    };
    // T(f) with log1p(f) = f - f^2 / 2 + f^3 T(f) on [sqrt(1/2) - 1, sqrt(2) - 1] (log_parts'
    // f: float's logs, with no division)
    static constexpr float log1p_mantissa_tail[9] = {
        float(6.9716114714511778317e-2), float(-1.1479733846637635556e-1),
        float(1.1685419923486739308e-1), float(-1.2425687331451106113e-1),
        float(1.4249057645697480404e-1), float(-1.6667802319501254074e-1),
        float(2.0000715748892101743e-1), float(-2.4999996957950882045e-1),
        float(3.3333331180030048052e-1),
    };
    // the bit pattern: mantissa bits, exponent bias
    static constexpr Int mant = 23;
    static constexpr Int bias = 127;
    static constexpr Int mant_mask = (Int(1) << mant) - 1;
    static constexpr Int one_bits = bias << mant;
    static constexpr float subnormal_shift = float(mant + 1);
    static constexpr float scale_up = 0x1p24f;       // 2^(mant + 1)
    static constexpr float round_magic = 0x1.8p23f;  // 1.5 2^mant
    static constexpr Int deep_shift = 64;
    static constexpr float deep_scale = 0x1p-64f;
    // the scaling functions' constants (_fastmath._scaling):
    // exp_neg_parts' n stays below 2^9 up to here: n ln2_hi exact
    static constexpr float parts_arg_max = 2 * 104.0f;
    static constexpr Int expm1_n_max = mant + 2;
    // v 2^-j, v < 2, rounds to 0 beyond this j (half the smallest subnormal is 2^-(bias+mant))
    static constexpr Int pow2_neg_max = bias + mant + 2;
    // 2^tiny_shift lifts every subnormal, and every number down to 2^-(mant + 2) times the
    // smallest subnormal, to a normal number
    static constexpr Int tiny_shift = 2 * mant + 2;
    static constexpr float tiny_scale = 0x1p48f;  // 2^(2 mant + 2)
};

template <>
struct Constants<double> {
    using Int = int64_t;
    using UInt = uint64_t;
    static constexpr double zero = 0.0;
    static constexpr double one = 1.0;
    static constexpr double two = 2.0;
    static constexpr double half = 0.5;
    static constexpr double inf = std::numeric_limits<double>::infinity();
    static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    static constexpr double tiny = std::numeric_limits<double>::min();
    static constexpr double ln2_hi = 6.93147180369123816490e-01;
    static constexpr double ln2_lo = 1.90821492927058770002e-10;
    static constexpr double log2e = 1.4426950408889634;
    // half the smallest subnormal is exp(-745.13)
    static constexpr double exp_arg_max = 746.0;
    static constexpr double sqrt2 = 1.4142135623730951;
    static constexpr double exp_tail[10] = {
        2.5100375832561233664e-8, 2.7620075879983366586e-7, 2.7557268480310025526e-6,
        2.4801521322368693266e-5, 1.9841269863040545271e-4, 1.3888888917196719077e-3,
        8.3333333333300644495e-3, 4.1666666666624161903e-2, 1.6666666666666667452e-1,
        5.0000000000000010211e-1,
    };
    static constexpr double atanh2_tail[11] = {
        2 * 7.8152889004614252231e-2, 2 * 3.7460718977753836504e-2, 2 * 5.422589197440007411e-2,
        2 * 5.86713953065159873e-2,   2 * 6.6675893157246279183e-2, 2 * 7.6922719824302746434e-2,
        2 * 9.0909099489813571913e-2, 2 * 1.1111111099118385279e-1, 2 * 1.4285714285800049646e-1,
        2 * 1.9999999999999761253e-1, 2 * 3.3333333333333333443e-1,
    };
    static constexpr Int mant = 52;
    static constexpr Int bias = 1023;
    static constexpr Int mant_mask = (Int(1) << mant) - 1;
    static constexpr Int one_bits = bias << mant;
    static constexpr double subnormal_shift = double(mant + 1);
    static constexpr double scale_up = 0x1p53;
    static constexpr double round_magic = 0x1.8p52;
    static constexpr Int deep_shift = 64;
    static constexpr double deep_scale = 0x1p-64;
    // n stays below 2^21 up to here
    static constexpr double parts_arg_max = 2 * 746.0;
    static constexpr Int expm1_n_max = mant + 2;
    static constexpr Int pow2_neg_max = bias + mant + 2;
    static constexpr Int tiny_shift = 2 * mant + 2;
    static constexpr double tiny_scale = 0x1p106;
};

// ---------------------------------------------------------------------------------------
// Bits.

#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define BCELOSS_BUILTIN_BIT_CAST 1
#endif
#endif

template <class To, class From>
BCELOSS_INLINE To bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of one size");
#ifdef BCELOSS_BUILTIN_BIT_CAST
    return __builtin_bit_cast(To, v);
#else
    To r;
    std::memcpy(&r, &v, sizeof r);
    return r;
#endif
}

// The bit pattern of a float (double) as an int32 (int64), and back.
template <class F>
BCELOSS_INLINE typename Constants<F>::Int to_bits(F v) {
    return bit_cast<typename Constants<F>::Int>(v);
}

template <class F>
BCELOSS_INLINE F from_bits(typename Constants<F>::Int bits) {
    return bit_cast<F>(bits);
}

// 2^e for an integer e with bias + e in [1, 2 bias]: its bits, (bias + e) << mant. Shifted
// as unsigned (a NaN argument upstream may give any e: the product with NaN then wins).
template <class F>
BCELOSS_INLINE F pow2_from_biased(typename Constants<F>::Int biased) {
    using C = Constants<F>;
    using UInt = typename C::UInt;
    return from_bits<F>(typename C::Int(UInt(biased) << C::mant));
}

// a - b of two integers, wrapping (the difference of two bit patterns)
template <class Int>
BCELOSS_INLINE Int wrapping_sub(Int a, Int b) {
    using UInt = std::make_unsigned_t<Int>;
    return Int(UInt(a) - UInt(b));
}

// ---------------------------------------------------------------------------------------
// Polynomials.

template <class F, std::size_t N, std::size_t... I>
BCELOSS_INLINE F horner_impl(F z, const F (&coeffs)[N], std::index_sequence<I...>) {
    F acc = coeffs[0];
    ((acc = std::fma(acc, z, coeffs[I + 1])), ...);
    return acc;
}

// coeffs[0] z^n + ... + coeffs[n], highest degree first, a fused multiply-add per step
template <class F, std::size_t N>
BCELOSS_INLINE F horner(F z, const F (&coeffs)[N]) {
    return horner_impl(z, coeffs, std::make_index_sequence<N - 1>{});
}

// ---------------------------------------------------------------------------------------
// exp.

template <class F>
struct ExpParts {
    F pm1;  // P
    typename Constants<F>::Int n;
};

// (P, n) with exp(-t) = 2^-n (1 + P) for t in [0, parts_arg_max]: n = round(t / ln2) and
// P = expm1(n ln2 - t), |P| < 0.42; NaN P for NaN.
template <class F>
BCELOSS_INLINE ExpParts<F> exp_neg_parts(F t) {
    using C = Constants<F>;
    // exp(-t) = 2^-n exp(r), n = round(t / ln2), r = n ln2 - t in [-ln2 / 2, ln2 / 2].
    // Adding 1.5 2^mant rounds t / ln2 to an integer and leaves it in the low bits of nm.
    // (Fused multiply-adds, as a compiler contracts them: fewer roundings, fewer instructions.)
    const F nm = std::fma(t, C::log2e, C::round_magic);
    const F n = nm - C::round_magic;
    const F r = std::fma(n, C::ln2_lo, std::fma(n, C::ln2_hi, -t));
    return {std::fma(r * r, horner(r, C::exp_tail), r),
            wrapping_sub(to_bits(nm), to_bits(C::round_magic))};
}

// v 2^-j for v in [1/2, 2] and an integer j in [0, bias + 63], rounded once: exact where the
// result is normal, correctly rounded below. v 2^(64 - j) is exact and normal (2^(64 - j) is
// a normal number for every such j, built from its bits), and the product with 2^-64 rounds
// once, where it is subnormal: two multiplications and no select.
template <class F>
BCELOSS_INLINE F scaled_down_by_bits(F v, typename Constants<F>::Int j) {
    using C = Constants<F>;
    const F lifted = v * pow2_from_biased<F>(wrapping_sub(C::bias + C::deep_shift, j));
    return lifted * C::deep_scale;
}

// exp(-a) for a in [0, inf]; NaN for NaN.
template <class F>
BCELOSS_INLINE F exp_neg(F a) {
    using C = Constants<F>;
    const F t = a > C::exp_arg_max ? C::exp_arg_max : a;  // a select, NaN passes
    const ExpParts<F> p = exp_neg_parts(t);
    return scaled_down_by_bits(C::one + p.pm1, p.n);
}

// expm1(-t) = 2^-n (1 + P) - 1 from (P, n) = exp_neg_parts(t).
template <class F>
BCELOSS_INLINE F expm1_from_parts(F pm1, typename Constants<F>::Int n) {
    using C = Constants<F>;
    // (2^-n - 1) + 2^-n P: 2^-n - 1 is exact for n <= mant + 1 and 2^-n P an exact scaling,
    // so one rounding, and no cancellation (n = 0 leaves P itself, n >= 1 a result below
    // -1/4). From n = mant + 3 on, 2^-n (1 + P) is below half the spacing above -1: -1.
    const bool far = n > C::expm1_n_max;
    const F scale = pow2_from_biased<F>(wrapping_sub(C::bias, far ? C::expm1_n_max : n));
    const F res = far ? -C::one : (scale - C::one) + scale * pm1;
    return std::isnan(pm1) ? pm1 : res;
}

// v 2^-j for v in [1/2, 2] and an integer j >= 0, rounded once: exact where the result is
// normal, 0 where it is below half the smallest subnormal.
template <class F>
BCELOSS_INLINE F ldexp_neg(F v, typename Constants<F>::Int j) {
    using C = Constants<F>;
    using Int = typename C::Int;
    j = j < C::pow2_neg_max ? j : C::pow2_neg_max;
    j = j > Int(0) ? j : Int(0);
    return scaled_down_by_bits(v, j);
}

// ---------------------------------------------------------------------------------------
// log.

// log1p(f) for f with |f / (2 + f)| <= 1/3, e.g. f in [sqrt(1/2) - 1, 1] (double only: float's
// logs take a polynomial, `log1p_mantissa`, and float's log1p(e) another, `log1p_unit`).
BCELOSS_INLINE double log1p_small(double f) {
    using C = Constants<double>;
    // log1p(f) = 2 atanh(s) = 2s + s R, s = f / (2 + f), R = 2 z T(z), z = s^2 (fdlibm's
    // rearrangement): 2s = f - s f and s f = hfsq (1 - s), hfsq = f^2 / 2, give
    //   log1p(f) = f - (hfsq - s (hfsq + R)),
    // where f is exact and the rounding of s only touches the small correction.
    const double s = f / (C::two + f);
    const double z = s * s;
    const double hfsq = C::half * f * f;
    return f - (hfsq - s * (hfsq + z * horner(z, C::atanh2_tail)));
}

// log1p(f) for log_parts' f, in [sqrt(1/2) - 1, sqrt(2) - 1]. float: f - (f^2 / 2 - f^3 T(f)),
// a polynomial and no division (the divider is the loops' slowest unit), f exact and every
// rounding inside the parentheses, which stay below f / 4: within an ulp as log1p_small's form;
// double: log1p_small, whose division costs less than the degree-19 polynomial it would need.
BCELOSS_INLINE float log1p_mantissa(float f) {
    using C = Constants<float>;
    const float z = f * f;
    const float hfsq = C::half * z;
    return f - (hfsq - f * z * horner(f, C::log1p_mantissa_tail));
}

BCELOSS_INLINE double log1p_mantissa(double f) { return log1p_small(f); }

template <class F>
struct LogParts {
    F k;  // the exponent, as a float
    F f;
};

// (k, f) with v = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)], for finite v > 0 (subnormals
// included): log(v) = k ln2 + log1p_small(f), f exact.
template <class F>
BCELOSS_INLINE LogParts<F> log_parts(F v) {
    using C = Constants<F>;
    using Int = typename C::Int;
    const bool sub = v < C::tiny;
    const F v1 = sub ? v * C::scale_up : v;
    const Int bits = to_bits(v1);
    const Int k = (bits >> C::mant) - C::bias;
    // (k fits 32 bits: converted from int32, which AVX2 and NEON do in vector registers)
    F kf = F(int32_t(k)) - (sub ? C::subnormal_shift : C::zero);
    F m = from_bits<F>((bits & C::mant_mask) | C::one_bits);
    const bool big = m > C::sqrt2;
    m = big ? m * C::half : m;
    kf = big ? kf + C::one : kf;
    return {kf, m - C::one};  // exact: m is within a factor 2 of 1 (Sterbenz)
}

// log(v) for v in [0, inf]: -inf at 0, NaN for NaN.
template <class F>
BCELOSS_INLINE F log(F v) {
    using C = Constants<F>;
    // v = 2^k m with m in [sqrt(1/2), sqrt(2)); log(v) = k ln2 + log1p(m - 1)
    const LogParts<F> p = log_parts(v);
    F res = p.k * C::ln2_hi + (log1p_mantissa(p.f) + p.k * C::ln2_lo);
    res = v == C::zero ? -C::inf : res;
    res = v == C::inf ? C::inf : res;
    return std::isnan(v) ? v : res;
}

template <class F>
struct Complement {
    F u;    // 1 - x, rounded
    F fix;  // log(1 - x) - log(u), to within a quarter of itself (`complement`)
};

// 1 - x for x in [0, 1] as (u, fix): 1 - x = u + e exactly, with e = (1 - u) - x (Fast2Sum,
// |1| >= |x|), so log(1 - x) = log(u) + log1p(e / u) = log(u) + e / u to within (e / u)^2.
// e / u is taken as e (2 - u) = (e / u)(1 - d^2), d = 1 - u, without a division: e is 0 where
// d >= 1/2 (1 - x is exact there, Sterbenz), so the correction is off by less than a quarter of
// itself, and it is 1 * e = -x exactly where u = 1 (x up to half the spacing below 1: there it is
// the whole result).
template <class F>
BCELOSS_INLINE Complement<F> complement(F x) {
    using C = Constants<F>;
    const F u = C::one - x;
    const F e = (C::one - u) - x;
    return {u, e * (C::two - u)};
}

// log1p(-x) = log(1 - x) for x in [0, 1]: -inf at 1.
template <class F>
BCELOSS_INLINE F log1p_neg(F x) {
    const Complement<F> c = complement(x);
    return log(c.u) + c.fix;
}

// log1p(e) for e in [0, 1] (exp(-|x|) in the logits form). float: a polynomial, no
// division; double: log1p_small, whose division costs less than the degree-21 polynomial
// it would need.
BCELOSS_INLINE float log1p_unit(float e) { return e * horner(e, Constants<float>::log1p_unit); }

BCELOSS_INLINE double log1p_unit(double e) { return log1p_small(e); }

// t + log1p(e) for e in [0, 1]: log1p_unit's last product fused into the add, always (the
// loss must not depend, by an ulp, on which gradients are computed beside it).
BCELOSS_INLINE float plus_log1p_unit(float t, float e) {
    return std::fma(e, horner(e, Constants<float>::log1p_unit), t);
}

BCELOSS_INLINE double plus_log1p_unit(double t, double e) { return t + log1p_small(e); }

// ---------------------------------------------------------------------------------------
// Products with limits.

// a b for b >= 0 (not NaN), reading 0 * inf as 0: a limit as a logit goes to +-inf.
template <class F>
BCELOSS_INLINE F times(F a, F b) {
    return a == Constants<F>::zero ? Constants<F>::zero : a * b;
}

// w v, reading 0 * inf as 0 and keeping NaN, as _formulas._mul_limit.
template <class F>
BCELOSS_INLINE F weighted(F w, F v) {
    // w = 0: 0, or NaN for a NaN v, as min(|v|, 0) gives it (0 < NaN is false); one select
    // on w, so that GCC vectorises the loops around it
    const F a = std::fabs(v);
    const F zero_or_nan = Constants<F>::zero < a ? Constants<F>::zero : a;
    return w == Constants<F>::zero ? zero_or_nan : w * v;
}

// ---------------------------------------------------------------------------------------
// Storage conversions.

// The float16 whose bit pattern is `bits`, widened to float (exact). A signalling NaN
// comes back quiet, as a hardware conversion returns it.
BCELOSS_INLINE float half_to_float(uint16_t bits) {
    const uint32_t h = bits;
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu;  // exponent and mantissa
    // normal: the exponent rebiased (127 - 15), the mantissa moved up by 23 - 10 bits
    const uint32_t normal = (em << 13) + (uint32_t(127 - 15) << 23);
    // inf and NaN: exponent all ones; NaN made quiet, its payload kept
    const uint32_t special = (em << 13) | 0x7F800000u | (em > 0x7C00u ? 0x00400000u : 0u);
    // zero and subnormal: mantissa 2^-24, exact in float (an integer below 2^10, scaled)
    const uint32_t small = bit_cast<uint32_t>(float(int32_t(em)) * 0x1p-24f);
    uint32_t out = em >= 0x7C00u ? special : normal;
    out = em < 0x0400u ? small : out;
    return bit_cast<float>(out | sign);
}

// The bits of float `value` rounded to float16, to nearest even: overflow to inf, subnormal
// results rounded once, NaN a quiet NaN (its payload's top bits kept, as a hardware
// conversion does).
BCELOSS_INLINE uint16_t float_to_half(float value) {
    const uint32_t f = bit_cast<uint32_t>(value);
    const uint32_t sign = (f >> 16) & 0x8000u;
    const uint32_t a = f & 0x7FFFFFFFu;  // |value|
    // |value| >= 2^16 (beyond the largest float16 and the halfway point above it): inf, or
    // a quiet NaN
    const uint32_t nan = 0x7E00u | ((a >> 13) & 0x03FFu);
    const uint32_t big = a > 0x7F800000u ? nan : 0x7C00u;
    // |value| below 2^-14 (float16 subnormal or zero): adding 1/2 puts the float16 mantissa
    // in the low 10 bits of the sum's, rounded to nearest even by the float addition
    // (2^-24, float16's spacing there, is the spacing of float in [1/2, 1))
    const uint32_t small = bit_cast<uint32_t>(bit_cast<float>(a) + 0.5f) - 0x3F000000u;
    // normal: rebias the exponent (15 - 127) and round the 13 dropped bits to nearest even
    // by adding 0xFFF plus the lowest kept bit; a carry into the exponent is right (up to
    // inf from 65520 on)
    const uint32_t odd = (a >> 13) & 1u;
    const uint32_t normal = (a - (uint32_t(127 - 15) << 23) + 0x0FFFu + odd) >> 13;
    uint32_t out = a < (uint32_t(127 - 14) << 23) ? small : normal;
    out = a >= (uint32_t(127 + 16) << 23) ? big : out;
    return uint16_t(out | sign);
}

// bfloat16 (its bits) to float: the upper half of a float (exact).
BCELOSS_INLINE float bfloat16_to_float(uint16_t bits) {
    return bit_cast<float>(uint32_t(bits) << 16);
}

// The bits of float `value` rounded to bfloat16, to nearest even; NaN stays a (quiet) NaN.
BCELOSS_INLINE uint16_t float_to_bfloat16(float value) {
    const uint32_t b = bit_cast<uint32_t>(value);
    // (wraps only for NaN bit patterns, which take the other select)
    const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    const uint32_t quiet = (b >> 16) | 0x40u;
    return uint16_t(std::isnan(value) ? quiet : rounded);
}

// double `value` as a float rounded to odd: truncated toward zero, its last bit set when that
// was inexact. Rounding the result to a format of at most 22 significant bits (float16: 11,
// bfloat16: 8) to nearest even rounds `value` itself correctly: no double rounding (Boldo and
// Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding
// to odd", 2008). Overflow keeps the largest float, odd, which rounds to inf.
BCELOSS_INLINE float float32_round_to_odd(double value) {
    const float f = float(value);
    const double back = double(f);
    uint32_t bits = bit_cast<uint32_t>(f);
    // rounded away from zero: one step back (sign and magnitude)
    bits = std::fabs(back) > std::fabs(value) ? bits - 1u : bits;
    const bool exact = back == value || std::isnan(value);
    return exact ? f : bit_cast<float>(bits | 1u);
}

}  // namespace bceloss

#endif  // BCELOSS_FASTMATH_HPP
