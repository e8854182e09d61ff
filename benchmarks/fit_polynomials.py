"""Regenerate the polynomial coefficients in `bceloss/_kernels/fastmath.hpp` (run by hand).

Each polynomial is mpmath's Chebyshev fit (`mpmath.chebyfit`, interpolation at Chebyshev
nodes: within a small factor of the minimax error) of the smooth part of a function on its
reduced range, at 50 digits; the coefficients are then rounded to the working dtype.

    python benchmarks/fit_polynomials.py
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 50
LN2_HALF = mp.log(2) / 2
Z_MAX = mp.mpf(1) / 9  # s = e / (2 + e) <= 1/3 for e in [0, 1]; z = s^2
F_MIN, F_MAX = mp.sqrt(mp.mpf(1) / 2) - 1, mp.sqrt(2) - 1  # log_parts' f


def exp_tail(r):
    """Q(r) with exp(r) = 1 + r + r^2 Q(r)."""
    if abs(r) < mp.mpf(10) ** -20:
        return mp.mpf(1) / 2 + r / 6
    return (mp.exp(r) - 1 - r) / r**2


def atanh_tail(z):
    """T(z) with atanh(s) = s + s z T(z), z = s^2: 1/3 + z/5 + z^2/7 + ..."""
    if z < mp.mpf(10) ** -30:
        return mp.mpf(1) / 3 + z / 5
    s = mp.sqrt(z)
    return (mp.atanh(s) / s - 1) / z


def log1p_tail(f):
    """T(f) with log1p(f) = f - f^2 / 2 + f^3 T(f): 1/3 - f/4 + f^2/5 - ..."""
    if abs(f) < mp.mpf(10) ** -12:
        return mp.mpf(1) / 3 - f / 4 + f**2 / 5
    return (mp.log1p(f) - f + f**2 / 2) / f**3


def log1p_ratio(e):
    """log1p(e) / e."""
    if e < mp.mpf(10) ** -30:
        return 1 - e / 2
    return mp.log1p(e) / e


def main() -> None:
    for name, fn, interval, degree in [
        ("EXP_F32", exp_tail, [-LN2_HALF, LN2_HALF], 4),
        ("EXP_F64", exp_tail, [-LN2_HALF, LN2_HALF], 9),
        ("ATANH_F64", atanh_tail, [0, Z_MAX], 10),
        ("LOG1P_UNIT_F32", log1p_ratio, [0, 1], 9),
        ("LOG1P_MANTISSA_TAIL_F32", log1p_tail, [F_MIN, F_MAX], 8),
    ]:
        coeffs, err = mp.chebyfit(fn, interval, degree + 1, error=True)
        rel = err / min(abs(fn(interval[0])), abs(fn(interval[1])))
        print(f"{name} = (  # degree {degree}, relative error {mp.nstr(rel, 3)}, highest first")
        for c in coeffs:
            print(f"    {mp.nstr(c, 20, min_fixed=-1, max_fixed=1)},")
        print(")")


if __name__ == "__main__":
    main()
