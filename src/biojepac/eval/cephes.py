"""The complementary error function as scipy.special.erfc computes it, compiled, without importing scipy.

scipy's real erfc is Cephes' (S. L. Moshier's Cephes Math Library, `ndtr.c`; scipy ships a C++ translation
in its `xsf` headers): below 1 it is 1 - erf, with erf a rational function of x^2; above, exp(-x^2) times
a rational function of x, one for x < 8 and one beyond. The same coefficients and the same operations in
the same order give the same float64 results, bit for bit (`tests/eval/test_cephes.py` compares them with
scipy over the whole range). The p-values of the Mann-Whitney tests need only this function of scipy, and
importing scipy.special (with scipy.sparse, which it loads) costs 0.26 s of CPU, a tenth of an evaluation.
"""

from __future__ import annotations

import math

import numpy as np

from biojepac.eval.kernels import kernel

# Cephes' coefficients, highest power first. For ERFC_Q, ERFC_S and ERF_U the leading 1 is implied.
ERFC_P = np.array([2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
                   4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
                   9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2])
ERFC_Q = np.array([1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
                   9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
                   1.65666309194161350182e3, 5.57535340817727675546e2])
ERFC_R = np.array([5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
                   6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0])
ERFC_S = np.array([2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
                   1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0])
ERF_T = np.array([9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
                  7.00332514112805075473e3, 5.55923013010394962768e4])
ERF_U = np.array([3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
                  2.26290000613890934246e4, 4.92673942608635921086e4])
COEFFICIENTS = (ERFC_P, ERFC_Q, ERFC_R, ERFC_S, ERF_T, ERF_U)
"""In the order `erfc_columns` takes them."""
MAXLOG = 7.09782712893383996843e2
"""log(largest float64): below exp(-MAXLOG) Cephes returns 0 (or 2) rather than a subnormal."""


def erfc(x: np.ndarray) -> np.ndarray:
    """erfc of a float64 array, as a new array."""
    out = np.array(x, dtype=np.float64, copy=True, ndmin=2)
    erfc_columns(out, 0, out.shape[1], *COEFFICIENTS)
    return out.reshape(np.shape(x))


@kernel
def erfc_columns(a, lo, hi, erfc_p, erfc_q, erfc_r, erfc_s, erf_t, erf_u):
    """erfc in place on the columns lo:hi of the 2-d float64 array `a`; the coefficients are this module's.
    Polynomials are evaluated by Horner's rule from the highest power, each step `value * x + c`, as Cephes'
    `polevl` (and `p1evl`, whose leading coefficient is 1, for the denominators)."""
    for i in range(a.shape[0]):
        for j in range(lo, hi):
            v = a[i, j]
            if math.isnan(v):
                continue
            x = abs(v)
            # Below 1: 1 - erf(v), erf odd and a ratio of polynomials in x^2 at |v|. Above: exp(-v^2) times a
            # ratio of polynomials in x, one pair below 8 and one beyond.
            if x < 1.0:
                t, top, bottom = x * x, erf_t, erf_u
            else:
                t, top, bottom = (x, erfc_p, erfc_q) if x < 8.0 else (x, erfc_r, erfc_s)
            num = top[0]
            for c in top[1:]:
                num = num * t + c
            den = t + bottom[0]
            for c in bottom[1:]:
                den = den * t + c
            if x < 1.0:
                e = x * num / den
                a[i, j] = 1.0 - (e if v >= 0.0 else -e)
                continue
            y = 0.0
            if -v * v >= -MAXLOG:
                y = (math.exp(-v * v) * num) / den
                if v < 0.0:
                    y = 2.0 - y
            if y == 0.0:  # underflow
                y = 2.0 if v < 0.0 else 0.0
            a[i, j] = y
