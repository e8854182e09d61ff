// The per-element terms of the BCE family for the fused kernels: loss, d/dx and d/dy at one
// element, as logits_terms, probabilities_terms and focal_ignoring (with _focal_terms) in
// the Python kernels compute them, with fastmath.hpp's branch-free exp and log and a select
// for every branch, so that a loop over elements calling them vectorises.
//
// x: input (logit or probability), y: target, w: weight (1, a constant the compiler folds,
// without one), p: pos_weight. `ignore` is the ignored label, NaN when there is none (the
// compare is then always false).
#ifndef BCELOSS_FORMULAS_HPP
#define BCELOSS_FORMULAS_HPP

#include "fastmath.hpp"

namespace bceloss {

template <class F>
struct Terms {
    F loss, gx, gy;  // loss, d/dx, d/dy at one element
};

// Label smoothing s as (1 - s, s / 2); (1, 0) without smoothing.
template <class F>
struct Smooth {
    F keep, add;
};

// The clamps of the probabilities form (_formulas.LOG_FLOOR and GRAD_EPS: PyTorch, Paddle
// and MindSpore clamp log(x) and log(1 - x) at -100, the denominator x (1 - x) at 1e-12).
template <class F>
struct Limits {
    static constexpr F log_floor = F(-100.0);
    static constexpr F grad_eps = F(1e-12);
};

// (y', 1 - y') for the smoothed target y' = y keep + add: 1 - y' as (1 - y) keep + add, a
// sum of terms >= 0 for y in [0, 1] (1 - y' itself would cancel where y' is near 1).
template <class F>
struct Smoothed {
    F y, q;
};

template <class F>
BCELOSS_INLINE Smoothed<F> smoothed(F y, Smooth<F> smooth) {
    return {y * smooth.keep + smooth.add, (Constants<F>::one - y) * smooth.keep + smooth.add};
}

// BCE with logits: l = w ((1 - y) x + lw softplus(-x)), lw = 1 + (p - 1) y. HasP false: no
// pos_weight (p is 1, the argument unused). Plain: no label smoothing and no ignored label
// (`smooth` and `ignore` unused), the same results with the operations on them left out (a
// NaN from a NaN target and a NaN pos_weight may come out with the other sign bit).
// NaN in x travels through exp_neg into every result; an infinite x gives exp(-|x|) = 0.
template <class F, bool HasP, bool Plain>
BCELOSS_INLINE Terms<F> logits(F x, F y, F w, F p, Smooth<F> smooth, F ignore) {
    using C = Constants<F>;
    p = HasP ? p : C::one;
    const F ax = std::fabs(x);
    const F e = exp_neg(ax);
    const F log1p_e = log1p_unit(e);  // log1p(exp(-|x|))
    const F relu_pos = x > C::zero ? x : C::zero;
    const F relu_neg = x < C::zero ? -x : C::zero;
    // (y (1 - 0) + 0 is y but for the sign of a zero y, which no result shows)
    const Smoothed<F> s = Plain ? Smoothed<F>{y, C::one - y} : smoothed(y, smooth);
    const F py = p * s.y;  // p is 1 without a pos_weight: p y = y exactly
    const bool nonneg = x >= C::zero;
    // (1 - y) max(x, 0) + p y max(-x, 0) + lw log1p(exp(-|x|)), lw = (1 - y) + p y, one of
    // the first two terms 0: softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) makes every term
    // >= 0 for y in [0, 1]. p (y |x|): p y first would underflow for a subnormal p or y.
    F relu_part = times(nonneg ? s.q : s.y, ax);
    F loss;
    if (HasP) {
        relu_part = nonneg ? relu_part : times(p, relu_part);
        // lw = q + p y fused always (the loss must not move by an ulp with the gradients
        // computed beside it)
        loss = relu_part + std::fma(p, s.y, s.q) * log1p_e;
    } else {  // lw = 1
        loss = plus_log1p_unit(relu_part, e);
    }
    // lw sigmoid(x) - p y = (1 - y) sigmoid(x) - p y sigmoid(-x) (1 - sigmoid(x) = sigmoid(-x))
    const F r = C::one / (C::one + e);
    const F er = e * r;
    F gx = s.q * (nonneg ? r : er) - py * (nonneg ? er : r);
    // (p - 1) softplus(-x) - x = (p - 1) log1p(exp(-|x|)) + p max(-x, 0) - max(x, 0);
    // with p = 1 it is exactly -x. Times 1 - s through the smoothing.
    F gy = (p - C::one) * log1p_e + times(p, relu_neg) - relu_pos;
    gy = Plain ? gy : gy * smooth.keep;
    loss = weighted(w, loss);
    gx = w * gx;
    gy = weighted(w, gy);
    if (HasP) {
        // weight 0 wins over an infinite pos_weight, as in _formulas.logits: 0 unless x, y
        // or p is NaN
        const bool void_ = w == C::zero && !(std::isnan(x) || std::isnan(y) || std::isnan(p));
        loss = void_ ? C::zero : loss;
        gx = void_ ? C::zero : gx;
        gy = void_ ? C::zero : gy;
    }
    const bool ign = !Plain && y == ignore;
    return {ign ? C::zero : loss, ign ? C::zero : gx, ign ? C::zero : gy};
}

// d/dx of BCE on probabilities for a smoothed target y': (x - y') / max(x (1 - x), 1e-12),
// PyTorch's clamp of the denominator (GRAD_EPS).
template <class F>
BCELOSS_INLINE F probabilities_gx(F x, F y) {
    using L = Limits<F>;
    const F den = x * (Constants<F>::one - x);
    return (x - y) / (den < L::grad_eps ? L::grad_eps : den);
}

// BCE on probabilities: l = -w (y max(log x, -100) + (1 - y) max(log(1 - x), -100)). NaN in
// x travels through the logs (the clamps let it pass) into every result.
template <class F>
BCELOSS_INLINE Terms<F> probabilities(F x, F y, F w, Smooth<F> smooth) {
    using L = Limits<F>;
    // clamps as selects that let NaN pass
    F log_x = log(x);
    log_x = log_x < L::log_floor ? L::log_floor : log_x;
    F log_q = log1p_neg(x);
    log_q = log_q < L::log_floor ? L::log_floor : log_q;
    // both logs are <= 0: for y in [0, 1] the two terms add without cancelling
    const Smoothed<F> s = smoothed(y, smooth);
    const F loss = -(s.y * log_x + s.q * log_q);
    const F gy = (log_q - log_x) * smooth.keep;
    return {weighted(w, loss), w * probabilities_gx(x, s.y), weighted(w, gy)};
}

// `probabilities` for a target y of 0 or 1 and no label smoothing, without d/dy: the loss
// reads one log, log x where y = 1 and log(1 - x) where y = 0 (log1p_neg's, from the same
// `complement`, its correction added as 0 where y = 1), for the bits `probabilities` gives: there
// y' = y + 0, and the other term 0 * (a log clamped to [-100, 0]) is a zero that leaves the sum as
// it is. (A NaN input with a NaN weight may come out with the other sign bit: which NaN a product
// of two keeps is the vectorised loop's choice.)
template <class F>
BCELOSS_INLINE Terms<F> probabilities_hard(F x, F y, F w) {
    using C = Constants<F>;
    using L = Limits<F>;
    const F sy = y + C::zero;  // y' as `smoothed` makes it: -0 becomes +0
    const bool positive = sy == C::one;
    const Complement<F> q = complement(x);
    F log_v = log(positive ? x : q.u) + (positive ? C::zero : q.fix);
    log_v = log_v < L::log_floor ? L::log_floor : log_v;
    return {weighted(w, -log_v), w * probabilities_gx(x, sy), C::zero};
}

namespace focal_detail {

// The leading bits of a double v >= 0: split_high(v) k is exact for integers k < 2^11.
BCELOSS_INLINE double split_high(double v) {
    return from_bits<double>(to_bits(v) & -(int64_t(1) << 11));  // clears 11 of 52 bits
}

// m^gamma, every argument double, as _formulas._power: from log m, where m is `normal` (not
// below the compute type's smallest normal number); else from m (1 + e) = near + far e (see
// focal_terms), `scaled` = (near + e) 2^shift, or where that is 0 (`zero`: near = 0) from
// log m = -u - log1p(e), u = |x|, e = exp(-u).
BCELOSS_INLINE double power(double m, double scaled, double shift, double u, double log1p_e,
                            double gamma, bool normal, bool zero) {
    using C = Constants<double>;
    const double ln2 = C::ln2_hi + C::ln2_lo;
    // -log m = K ln2 - log1p(f) + extra, from log v = k ln2 + log1p(f): v = m, K = -k, extra
    // 0; or v = (near + e) 2^shift, K = shift - k, extra = log1p(e). K >= 0 is below 2^11.
    const LogParts<double> kf = log_parts(normal ? m : scaled);
    const double l1 = log1p_small(kf.f);
    const double kk = (normal ? C::zero : shift) - kf.k;
    const double extra = normal ? C::zero : log1p_e;
    double t = zero ? gamma * (u + log1p_e) : gamma * ((kk * ln2 - l1) + extra);
    t = t > C::exp_arg_max ? C::exp_arg_max : t;  // NaN passes
    // exp(-t) = 2^-j exp(-rho), j = round(t / ln2), rho = t - j ln2 in [-ln2/2, ln2/2]
    const double jm = t * C::log2e + C::round_magic;
    const double jf = jm - C::round_magic;
    const int64_t j = wrapping_sub(to_bits(jm), to_bits(C::round_magic));
    // rho without rounding the large t: gamma K = g_hi K + g_lo K with g_hi K exact, and so
    // is g_hi K - j; what is rounded is of the size of rho (zero: t is rounded, error
    // gamma u eps, as in _formulas)
    const double g_hi = split_high(gamma);
    double rho = ((g_hi * kk - jf) + (gamma - g_hi) * kk) * ln2 + gamma * (extra - l1);
    rho = zero ? (t - jf * C::ln2_hi) - jf * C::ln2_lo : rho;
    return ldexp_neg(exp_neg(rho), j);
}

// a_t = alpha y + (1 - alpha)(1 - y), q = 1 - y; 1 when alpha is off.
template <class F, bool HasAlpha>
BCELOSS_INLINE F alpha_t(F alpha, F y, F q) {
    using C = Constants<F>;
    return HasAlpha ? alpha * y + (C::one - alpha) * q : C::one;
}

// (2 alpha - 1) ce + a_t v: d (a_t c) / dy where dc / dy = v; v itself when alpha is off.
template <class F, bool HasAlpha>
BCELOSS_INLINE F alpha_mix(F alpha, F at, F ce, F v) {
    using C = Constants<F>;
    return HasAlpha ? (C::two * alpha - C::one) * ce + at * v : v;
}

}  // namespace focal_detail

// The sigmoid focal loss at one element, as _formulas.focal: l = w a_t m^gamma ce, with
// m = 1 - p_t and ce BCE with logits. HasAlpha false: alpha off (a_t = 1, the argument
// unused). gamma >= 0, double whatever F (m^gamma is computed in double and rounded once);
// 0 gives BCE with logits weighted by a_t, values and gradients. NaN in x, or a target
// outside [0, 1], gives NaN; an infinite x, the limits of _formulas._focal_limit. Zero at
// the ignored label.
template <class F, bool HasAlpha>
BCELOSS_INLINE Terms<F> focal(F x, F y, F w, F alpha, double gamma, F ignore) {
    using C = Constants<F>;
    using D = Constants<double>;
    using focal_detail::alpha_mix;
    using focal_detail::alpha_t;
    const F g = F(gamma);
    const bool g0 = g == C::zero;
    const F u = std::fabs(x);
    const F e = exp_neg(u);
    const F log1p_e = log1p_unit(e);  // log1p(exp(-|x|))
    // exp(-|x|) = 2^-n (1 + P) once more, clamped further out than exp_neg: for expm1(-|x|)
    // and a scaled exp(-|x|) that does not underflow
    const ExpParts<F> parts = exp_neg_parts(u > C::parts_arg_max ? C::parts_arg_max : u);
    const F relu_pos = x > C::zero ? x : C::zero;
    const F relu_neg = x < C::zero ? -x : C::zero;
    const F q = C::one - y;
    const bool nonneg = x >= C::zero;
    // ce, BCE with logits as in logits(): softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) makes
    // (1 - y) max(x, 0) + y max(-x, 0) + log1p(exp(-|x|)) a sum of terms >= 0;
    // d ce / d x = (1 - y) sigmoid(x) - y sigmoid(-x), as 1 - sigmoid(x) = sigmoid(-x).
    const F ce = plus_log1p_unit(times(q, relu_pos) + times(y, relu_neg), e);
    const F inv = C::one / (C::one + e);
    const F er = e * inv;
    const F sig_pos = nonneg ? inv : er;  // sigmoid(x)
    const F sig_neg = nonneg ? er : inv;  // sigmoid(-x)
    const F ce_x = q * sig_pos - y * sig_neg;
    // m = 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x) = (near + far e) / (1 + e), near =
    // 1 - y for x >= 0 and y below (far the other): terms >= 0, in double.
    const F near = nonneg ? q : y;
    const F far = nonneg ? y : q;
    const double ed = double(e);
    const double md = (double(near) + double(far) * ed) / (D::one + ed);
    const bool normal = md >= double(C::tiny);
    // m below the smallest normal number: near too, so far = 1 - near rounds to 1, and
    // m (1 + e) = near + e. Scaled by 2^S both keep their digits (e 2^S from the same P).
    const F near_s = near * C::tiny_scale;
    const F e_s = ldexp_neg(C::one + parts.pm1, parts.n - C::tiny_shift);
    const bool zero = near == C::zero && md < double(C::tiny);
    // m^gamma stays in double until it has multiplied its factor: in float it may be
    // subnormal where the product is not
    const double mg = focal_detail::power(md, double(near_s) + double(e_s), double(C::tiny_shift),
                                          double(u), double(log1p_e), gamma, normal, zero);
    // r = sigmoid(x) sigmoid(-x) / m and ce / m. Below the smallest normal number, e and m
    // are their scaled copies' (1 + e = 1, log1p(e) = e), and ce = near |x| + log1p(e), so
    //   r = e / (near + e),  ce / m = (near |x| + e) / (near + e),
    // 1 and 1 for a target 0 or 1 (near = 0), as in _formulas.focal.
    const bool some = near_s != C::zero;
    const F rs = C::one / (some ? near_s + e_s : C::one);
    const F r_tiny = some ? e_s * rs : C::one;
    const F ce_by_m_tiny = some ? (near_s * u + e_s) * rs : C::one;
    const F rm = C::one / (normal ? F(md) : C::one);
    const F r = normal ? sig_pos * sig_neg * rm : r_tiny;
    const F ce_by_m = normal ? ce * rm : ce_by_m_tiny;
    const F at = alpha_t<F, HasAlpha>(alpha, y, q);
    F loss = g0 ? ce : F(times(mg, double(ce)));
    // d/dx: a_t m^gamma (gamma (1 - 2y) r ce + d ce / d x), dm/dx = (1 - 2y) s c
    F gx = g * (C::one - C::two * y) * times(r, ce) + ce_x;
    gx = g0 ? ce_x : F(mg * double(gx));
    // d/dy: m^gamma ((2 alpha - 1) ce + a_t (gamma (c - s) ce / m - x)), with
    // c - s = sigmoid(-x) - sigmoid(x) = expm1(-|x|) / (1 + exp(-|x|)) for x >= 0, negated
    // below: no cancellation near x = 0; it has the sign of -x, so the inner sum does not
    // cancel
    const F tanh = expm1_from_parts(parts.pm1, parts.n) * inv;
    const F c_minus_s = nonneg ? tanh : -tanh;
    const F inner = g0 ? -x : g * c_minus_s * ce_by_m - x;
    F gy = alpha_mix<F, HasAlpha>(alpha, at, ce, inner);
    gy = g0 ? gy : F(mg * double(gy));
    // x = +-inf: |x| times the coefficient of |x| in the loss, side^gamma ((2 alpha - 1) side
    // -+ a_t (gamma + 1)) with side = near = m there (_formulas._focal_limit)
    const F sign_g1 = nonneg ? -(g + C::one) : g + C::one;
    F lim = alpha_mix<F, HasAlpha>(alpha, at, near, sign_g1);
    const bool vanish = mg == D::zero && gamma > 0;  // m^gamma = 0 (0^0 is 1)
    lim = vanish ? C::zero : lim;  // (two selects: GCC does not vectorise an || of a double
    lim = lim == C::zero ? C::zero : lim * C::inf;  // and a float compare)
    gy = u == C::inf ? lim : gy;
    loss = weighted(at, loss);
    gx = at * gx;
    // A target outside [0, 1] has no focal loss: m = 1 - p_t may be negative there, and
    // m^gamma has no real value. NaN, values and gradients, as _formulas.focal.
    const bool outside = y < C::zero || y > C::one;
    loss = outside ? C::nan : loss;
    gx = outside ? C::nan : gx;
    gy = outside ? C::nan : gy;
    const bool ign = y == ignore;
    return {ign ? C::zero : weighted(w, loss), ign ? C::zero : w * gx,
            ign ? C::zero : weighted(w, gy)};
}

}  // namespace bceloss

#endif  // BCELOSS_FORMULAS_HPP
