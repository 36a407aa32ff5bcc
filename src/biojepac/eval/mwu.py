"""Mann-Whitney U of every perturbation against the control, for a block of genes at once, plus BH FDR.

Matches pdex (cell-eval's DE library) as cell-eval calls it: two-sided, asymptotic normal approximation,
tie-corrected variance, continuity correction 0.5, and p = 1 when every value is tied.

How it works. Zeros dominate single-cell data and are all tied, so they are handled in closed form; only
non-zero entries are sorted, each gene's entries by (value, group) with the control as group 0. One pass
over that order (`_scan_sorted`, compiled with numba: a plain loop, where numpy needed a dozen passes
over the block) walks the runs of equal values. A run holding `a` control cells and, per perturbation
p, `b` cells of p adds to U(p)

    b * (control non-zeros below the run + a / 2)

and the tie term of pdex's variance, sum over tie groups of (t^3 - t) in (p + control), is

    ties(p) = sum over runs of (a^3 - a) + sum over p's runs of ((a+b)^3 - a^3 - b) + (z^3 - z)

with z = z_p + z_c the zeros of p and of the control; U(p) gains z_c for each non-zero of p (every
control zero lies below it) and z_p * z_c / 2 for the tied zeros. All terms are exact integers or halves
in float64, so U and the tie term equal pdex's bit for bit whatever the summation order. The same pass
sums each group's values and squares, so the means come with the p-values.
"""

import dataclasses

import beartype
import numba
import numpy as np
import scipy.special
from jaxtyping import Float, Int, jaxtyped


@dataclasses.dataclass(frozen=True)
class BlockStats:
    """Per (group, gene) results for one block of genes; row 0 is the control."""

    sums: np.ndarray
    """Sum of the values, (groups x genes), float64."""
    sumsq: np.ndarray
    """Sum of the squared values, (groups x genes), float64."""
    pval: np.ndarray
    """Two-sided Mann-Whitney p-value of each perturbation vs the control, (perts x genes)."""


@jaxtyped(typechecker=beartype.beartype)
def block_stats(
    cols: Int[np.ndarray, " nnz"],
    vals: np.ndarray,
    groups: Int[np.ndarray, " nnz"],
    n_per_group: Int[np.ndarray, " groups"],
    n_cols: int,
) -> BlockStats:
    """Sums, sums of squares and p-values of groups 1..P vs group 0, for `n_cols` genes given as non-zero
    entries. `cols` is each entry's gene (non-decreasing: entries grouped by gene, as
    `inputs.gene_blocks` yields them), `groups` its cell's group (0 = control).
    """
    n_groups = len(n_per_group)
    gbits = max(int(n_groups - 1).bit_length(), 1)
    # One int64 key per entry that sorts by (value, group); non-negative floats sort like their bits.
    key, table = _value_key(vals)
    assert int(key.max(initial=0)).bit_length() + gbits <= 63, "too many distinct values to pack"
    key <<= gbits
    key |= groups
    # Each gene's run sorted on its own: cache-resident sorts (numpy's vectorised sort beats numba's).
    bounds = np.searchsorted(cols, np.arange(n_cols + 1))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi - lo > 1:
            key[lo:hi].sort()
    sums, sumsq, nnz, u_nz, ties_nz, ctrl_ties = _scan_sorted(key, bounds, gbits, n_groups, table)

    zeros_ctrl = n_per_group[0] - nnz[0]
    n1 = n_per_group[1:, None].astype(np.float64)
    zeros_pert = n1 - nnz[1:]
    zeros = zeros_pert + zeros_ctrl[None, :]
    u1 = u_nz[1:] + nnz[1:] * zeros_ctrl[None, :] + 0.5 * zeros_pert * zeros_ctrl[None, :]
    ties = ctrl_ties[None, :] + ties_nz[1:] + (zeros - 1.0) * zeros * (zeros + 1.0)
    return BlockStats(sums, sumsq, _pvalue(u1, n1, float(n_per_group[0]), ties))


def mwu_pvalues(cols, vals, groups, n_per_group, n_cols: int) -> np.ndarray:
    """Only the p-values of `block_stats`, (perts x genes)."""
    return block_stats(cols, vals, groups, n_per_group, n_cols).pval


@numba.njit(nogil=True, cache=True)
def _scan_sorted(key, bounds, gbits, n_groups, table):
    """One pass over each gene's sorted keys: per (group, gene) sums, sums of squares and non-zero counts;
    per perturbation U over its non-zeros and its share of the tie term; per gene the control's ties."""
    n_cols = len(bounds) - 1
    sums = np.zeros((n_groups, n_cols))
    sumsq = np.zeros((n_groups, n_cols))
    nnz = np.zeros((n_groups, n_cols))
    u = np.zeros((n_groups, n_cols))
    ties = np.zeros((n_groups, n_cols))
    ctrl_ties = np.zeros(n_cols)
    bits = np.zeros(1, np.int32)
    as_float = bits.view(np.float32)  # float32 values are keyed by their bit pattern
    gmask = (1 << gbits) - 1
    for g in range(n_cols):
        below = 0  # control non-zeros below the current run of equal values
        i, hi = bounds[g], bounds[g + 1]
        while i < hi:
            vkey = key[i] >> gbits
            if len(table):
                value = table[vkey]
            else:
                bits[0] = vkey
                value = np.float64(as_float[0])
            a = 0  # control cells holding this value: group 0 sorts first
            while i < hi and key[i] == vkey << gbits:
                a += 1
                i += 1
            if a:
                sums[0, g] += a * value
                sumsq[0, g] += a * value * value
                nnz[0, g] += a
                ctrl_ties[g] += (a - 1) * a * (a + 1)
            while i < hi and key[i] >> gbits == vkey:
                grp = key[i] & gmask
                start = i
                while i < hi and key[i] == key[start]:
                    i += 1
                b = i - start
                sums[grp, g] += b * value
                sumsq[grp, g] += b * value * value
                nnz[grp, g] += b
                u[grp, g] += b * (below + 0.5 * a)
                ties[grp, g] += b * (3 * a * (a + b) + b * b - 1)  # (a+b)^3 - a^3 - b
            below += a
    return sums, sumsq, nnz, u, ties, ctrl_ties


def _pvalue(u1: np.ndarray, n1: np.ndarray, n2: float, ties: np.ndarray) -> np.ndarray:
    """pdex's asymptotic formula, operation for operation, so the float64 results agree exactly."""
    n = n1 + n2
    u = np.maximum(u1, n1 * n2 - u1)
    mu = n1 * n2 / 2.0
    s_sq = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - mu - 0.5) / np.sqrt(s_sq)
        p = 0.5 * scipy.special.erfc(z / np.sqrt(2.0)) * 2.0
    return np.where(s_sq <= 0.0, 1.0, np.clip(p, 0.0, 1.0))


def _value_key(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An int64 key that sorts like the (non-negative) values, and the table mapping it back to the value:
    float32 bit patterns (empty table: the bits are the value), else dense ranks into the unique values."""
    if vals.dtype == np.float32:
        return vals.view(np.int32).astype(np.int64), np.zeros(0)
    uniq, inv = np.unique(vals, return_inverse=True)
    return inv.astype(np.int64), uniq.astype(np.float64)


def bh_fdr(p: Float[np.ndarray, "perts genes"]) -> Float[np.ndarray, "perts genes"]:
    """Benjamini-Hochberg within each perturbation (row), as pdex does with scipy's
    `false_discovery_control(method="bh")`: the same operations, so the same bits (scipy.stats is slow to
    import, so it is not used here)."""
    m = p.shape[-1]
    if m <= 1:
        return p
    order = np.argsort(p, axis=-1)
    ps = np.take_along_axis(p, order, axis=-1)
    ps *= m / np.arange(1, m + 1, dtype=ps.dtype)
    np.minimum.accumulate(ps[..., ::-1], out=ps[..., ::-1], axis=-1)  # reject every p below a rejected one
    out = np.empty_like(ps)
    np.put_along_axis(out, order, ps, axis=-1)
    return np.clip(out, 0.0, 1.0)
