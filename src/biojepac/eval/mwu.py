"""Mann-Whitney U of every perturbation against the control, for a block of genes at once, plus BH FDR.

Matches pdex (cell-eval's DE library) as cell-eval calls it: two-sided, asymptotic normal approximation,
tie-corrected variance, continuity correction 0.5, and p = 1 when every value is tied.

How it is vectorised. Zeros dominate single-cell data and are all tied, so they are handled in closed
form; only non-zero entries are sorted, each gene's entries by (value, group) with the control as group 0.
In that order an entry x of perturbation p contributes to U(p) the number of control values below it plus
half the control values equal to it, and the number below is a running count of control entries
(`np.cumsum`). So for a gene with z_c control zeros and z_p zeros in p,

    U(p) = sum over p's non-zero x of (z_c + #(ctrl non-zeros < x) + #(ctrl == x) / 2) + z_p * z_c / 2

Only tie blocks (runs of equal non-zero values, usually few) need more than the running count: for each
we count the control cells `a` in it and, per group, the cells `b` holding it. The tie term of pdex's
variance, sum over tie groups of (t^3 - t) in (p + control), is then

    ties(p) = sum over control runs of (a^3 - a) + sum over p's runs of ((a+b)^3 - a^3 - b) + (z^3 - z)

with z = z_p + z_c; untied values (a = 0, b = 1 or a = 1 alone) add 0. All terms are exact integers or
halves in float64, so U and the tie term equal pdex's bit for bit whatever the summation order.
"""

import numpy as np
import scipy.special
import scipy.stats
from jaxtyping import Float, Int, jaxtyped
import beartype


@jaxtyped(typechecker=beartype.beartype)
def mwu_pvalues(
    cols: Int[np.ndarray, " nnz"],
    vals: np.ndarray,
    groups: Int[np.ndarray, " nnz"],
    n_per_group: Int[np.ndarray, " groups"],
    n_cols: int,
) -> Float[np.ndarray, "perts n_cols"]:
    """Two-sided p-values of each group 1..P vs group 0, for `n_cols` genes given as non-zero entries.

    `cols` is each entry's gene (non-decreasing: entries grouped by gene, as `inputs.gene_blocks` yields
    them), `groups` its cell's group (0 = control).
    """
    n_groups = len(n_per_group)
    if len(vals) == 0:  # every value is zero: all tied
        return np.ones((n_groups - 1, n_cols))
    # One int64 key per entry that sorts by (value, group); non-negative floats sort like their bits.
    gbits = max(int(n_groups - 1).bit_length(), 1)
    vkey, vbits = _value_key(vals)
    assert vbits + gbits <= 63, f"too many distinct values to pack: {vbits}+{gbits} bits"
    key = np.left_shift(vkey, gbits)
    del vkey
    key |= groups
    # Each gene's run sorted on its own: cache-resident sorts, and `cols` stays valid.
    bounds = np.searchsorted(cols, np.arange(n_cols + 1))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi - lo > 1:
            key[lo:hi].sort()
    group = key & ((1 << gbits) - 1)
    is_ctrl = group == 0
    # Control entries before each entry in this block (int32: numpy's bool -> int64 cumsum is ~20x slower).
    ctrl_below = np.cumsum(is_ctrl, dtype=np.int32)
    ctrl_below -= is_ctrl
    new_value = np.empty(len(key), bool)
    new_value[0] = True
    np.greater_equal(key[1:] ^ key[:-1], 1 << gbits, out=new_value[1:])  # value bits differ
    new_value[bounds[:-1][bounds[:-1] < len(key)]] = True  # equal values in two genes are not tied

    u_w = ctrl_below.astype(np.float64)
    ctrl_ties = np.zeros(n_cols)
    tie_w, tie_flat = _tie_blocks(new_value, is_ctrl, group, cols, ctrl_below, u_w, ctrl_ties, n_cols)
    # Sum per (group, gene); row 0 (control) is computed and dropped, which is cheaper than masking.
    flat = group * n_cols
    flat += cols
    size = n_groups * n_cols
    u_nz = np.bincount(flat, weights=u_w, minlength=size).reshape(n_groups, n_cols)[1:]
    nnz = np.bincount(flat, minlength=size).reshape(n_groups, n_cols).astype(np.float64)
    ties_nz = np.bincount(tie_flat, weights=tie_w, minlength=size).reshape(n_groups, n_cols)[1:]

    # The running count started at the block's first gene: shift each gene to count from its own start
    # and add its control zeros, which lie below every non-zero value.
    nnz_ctrl, nnz_pert = nnz[0], nnz[1:]
    zeros_ctrl = n_per_group[0] - nnz_ctrl
    ctrl_before_gene = np.cumsum(nnz_ctrl) - nnz_ctrl
    u_nz += nnz_pert * (zeros_ctrl - ctrl_before_gene)[None, :]

    n1 = n_per_group[1:, None].astype(np.float64)
    zeros_pert = n1 - nnz_pert
    zeros = zeros_pert + zeros_ctrl[None, :]
    u1 = u_nz + 0.5 * zeros_pert * zeros_ctrl[None, :]
    ties = ctrl_ties[None, :] + ties_nz + (zeros - 1.0) * zeros * (zeros + 1.0)
    return _pvalue(u1, n1, float(n_per_group[0]), ties)


def _tie_blocks(new_value, is_ctrl, group, cols, ctrl_below, u_w, ctrl_ties, n_cols):
    """Handle runs of equal non-zero values: fix `u_w` in place (count below the run + half the control
    cells in it), add the control runs' a^3 - a to `ctrl_ties`, and return the perturbation runs'
    (a+b)^3 - a^3 - b with their flat (group, gene) index, for a bincount. Entries outside tie blocks
    contribute nothing here, so the work is proportional to the tied entries only.
    """
    in_tie = ~new_value
    in_tie[:-1] |= ~new_value[1:]  # the first entry of a run of two or more
    idx = np.flatnonzero(in_tie)
    if len(idx) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    starts = np.flatnonzero(new_value[idx])  # tie blocks, as positions in idx
    block = np.cumsum(new_value[idx]) - 1
    a = np.add.reduceat(is_ctrl[idx].astype(np.float64), starts)  # control cells per block
    u_w[idx] = (ctrl_below[idx[starts]] + 0.5 * a)[block]
    # Runs of one (value, group) inside the blocks: b cells of that group hold the value.
    g = group[idx]
    new_run = new_value[idx].copy()
    new_run[1:] |= g[1:] != g[:-1]
    run_start = np.flatnonzero(new_run)
    b = np.diff(run_start, append=len(idx)).astype(np.float64)
    run_a = a[block[run_start]]
    run_g = g[run_start]
    run_col = cols[idx[run_start]]
    ctrl = run_g == 0
    ctrl_ties += np.bincount(run_col[ctrl], weights=(run_a[ctrl] - 1.0) * run_a[ctrl] * (run_a[ctrl] + 1.0),
                             minlength=n_cols)
    # (a+b)^3 - a^3 - b, without powers: b * (3a(a+b) + b^2 - 1); exact in float64 for these integers.
    w = b * (3.0 * run_a * (run_a + b) + b * b - 1.0)
    return w[~ctrl], (run_g * n_cols + run_col)[~ctrl]


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


def _value_key(vals: np.ndarray) -> tuple[np.ndarray, int]:
    """An int64 key that sorts like the (non-negative) values: float32 bit patterns, else dense ranks."""
    if vals.dtype == np.float32:
        return vals.view(np.int32).astype(np.int64), 31
    uniq, inv = np.unique(vals, return_inverse=True)
    return inv.astype(np.int64), max(int(len(uniq)).bit_length(), 1)


def bh_fdr(p: Float[np.ndarray, "perts genes"]) -> Float[np.ndarray, "perts genes"]:
    """Benjamini-Hochberg within each perturbation (row), as pdex does with scipy."""
    return scipy.stats.false_discovery_control(p, axis=-1, method="bh")
