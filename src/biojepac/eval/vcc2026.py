"""The VCC 2026 metrics (cell-eval2 0.20.0, `run --preset vcc2026`), vectorised over perturbations and genes.

Definitions (cell-eval2's `docs/vcc2026_metrics/` and `configs/vcc2026.yaml`; read there, reimplemented here):
both files are raw counts with the same genes; the prediction's effects and its DE test use the REAL control
cells (`control_source: real`); every metric drops the perturbation's own target gene.

- Pseudobulk `b_p = log1p(P_p * (TS / sum_g P_p))`, P_p the group's count sums, TS = 5e4.
- `pds_cosine`: cosine distance between the predicted effect `b^_p - b_ctrl` and every real effect, with the
  columns of ALL panel targets removed; zero norm -> distance 1; clipped to [0, 2]; midrank of the true
  perturbation, PDS = 1 - rank / (n - 1).
- `expr_mse_unbiased_capped` / `expr_distance_unbiased`: squared distances corrected by a delete-one-cell
  jackknife C_p of the pseudobulk; the prediction's correction is capped at the real one and scaled down by
  rho = min(1, B / claim) (B: its across-perturbation spread); `expr_mse_unbiased_capped_norm` is
  sum N_p / sum D_p.
- DE: per perturbation vs the control, scanpy's Wilcoxon rank-sum (tie-corrected, no continuity correction)
  on log1p(CPM); genes whose control mean CPM exceeds 5; BH per perturbation over those genes; significant
  = p_adj < 0.05; lfc = log2((mean CPM pert + 1e-9) / (mean CPM ctrl + 1e-9)).
- `de_wilcoxon_sig_jaccard`, `de_wilcoxon_direction_fidelity_yield_raw` (k / max(n_pred, n_real)),
  `de_wilcoxon_direction_reach_raw` (deepest prefix of the prediction's ranking of the real significant
  genes with sign purity >= 0.9), `de_wilcoxon_lfc_nmae` (over real significant genes with finite lfc,
  >= 10 of them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import scipy.special

from biojepac.errors import InputError
from biojepac.eval.inputs import row_totals
from biojepac.eval.kernels import kernel, prange
from biojepac.eval.stats import _csr_group_sums
from biojepac.eval.vcc2026_de import Source, wilcoxon_stats

BULK_TARGET_SUM = 5e4
CPM_TARGET_SUM = 1e6
MIN_CTRL_CPM = 5.0
ALPHA = 0.05
LFC_EPS = 1e-9
REACH_P0 = 0.9
LFC_MIN_GATE = 10
MAX_CELL_TOTAL = 1e6
INTEGRAL_ATOL = 1e-6
METRICS = ("pds_cosine", "expr_mse_unbiased_capped", "de_wilcoxon_direction_fidelity_yield_raw",
           "de_wilcoxon_direction_reach_raw", "de_wilcoxon_sig_jaccard", "de_wilcoxon_lfc_nmae")
"""Per-perturbation columns, cell-eval2's names."""


@dataclasses.dataclass(frozen=True)
class CountScreen:
    """Raw counts grouped by perturbation: group 0 is the control, 1..P are `perts` (sorted)."""

    name: str
    x: sp.csr_matrix
    """Cells x genes counts (float32 as read, else float64), CSR with sorted indices."""
    codes: np.ndarray
    perts: np.ndarray
    genes: np.ndarray
    control: str = "non-targeting"
    """The control's label."""


def count_screen(x, labels, genes, *, control: str, name: str, integral: bool = True) -> CountScreen:
    """Check raw counts (non-negative integers, no cell total above 1e6) and group the cells. `integral=False`
    admits fractional values (the baseline's scaled control cells, as cell-eval2 allows them there).
    float32 values are kept as they are (every count below 2**24 is exact in float32); sums are float64."""
    x = sp.csr_matrix(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    x.sum_duplicates()
    x.sort_indices()
    bad_value, first_frac, totals = _check_counts(x.indptr, x.data, INTEGRAL_ATOL)
    if bad_value:
        raise InputError(f"{name}: VCC 2026 needs raw counts (non-negative, finite)")
    if integral and first_frac >= 0:  # cell-eval2's test: within 1e-6 of an integer, kept as stored
        raise InputError(f"{name}: VCC 2026 needs raw integer counts; cell {first_frac} holds a fractional value")
    if totals.size and totals.max() > MAX_CELL_TOTAL:
        raise InputError(f"{name}: a cell totals {totals.max():.0f} counts, above {MAX_CELL_TOTAL:.0f}")
    labels = np.asarray(labels).astype(str)
    if control not in labels:
        raise InputError(f"{name}: no control cells labelled {control!r}")
    perts = np.unique(labels[labels != control])
    codes = np.where(labels == control, 0, np.searchsorted(perts, labels) + 1)
    return CountScreen(name, x, codes.astype(np.int64), perts, np.asarray(genes).astype(str), control)


@kernel
def _check_counts(indptr, data, atol):
    """(any negative or non-finite value, first row holding a value farther than atol from an integer or -1,
    row totals in float64), in one pass."""
    bad = False
    first = -1
    totals = np.zeros(len(indptr) - 1)
    for r in range(len(indptr) - 1):
        t = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            d = np.float64(data[j])
            if not (d >= 0.0 and d < np.inf):
                bad = True
            if first < 0 and abs(d - np.rint(d)) > atol:
                first = r
            t += d
        totals[r] = t
    return bad, first, totals


def target_columns(perts, genes, target_gene_map: dict | None = None) -> np.ndarray:
    """Column of each perturbation's own target gene, -1 where it resolves to none (cell-eval2's rule): the
    map's entry first (None declares no target gene), else none when the map's "*" entry is None, else the
    label itself as a gene name. No label resolving at all is an error, as in cell-eval2: the labels are
    then construct IDs and need a map."""
    pos = {g: k for k, g in enumerate(genes)}
    if len(pos) != len(genes):
        raise InputError("duplicate gene names: target-gene exclusion needs unique names")
    tmap = target_gene_map or {}
    out = np.full(len(perts), -1, np.int64)
    declared = 0
    for i, p in enumerate(perts):
        gene = tmap[p] if p in tmap else (None if "*" in tmap and tmap["*"] is None else p)
        declared += gene is None
        if gene is not None and gene in pos:
            out[i] = pos[gene]
    if len(perts) and declared == 0 and (out < 0).all():
        raise InputError(f"no perturbation label names a measured gene (e.g. {perts[0]!r}): target genes cannot "
                         "be excluded; give a target-gene map (label -> gene, or none)")
    return out


def harmonised_target_map(perts, genes, symbols=None) -> dict[str, str]:
    """label -> measured gene for the labels that are not themselves a gene name but name one through our gene
    harmonisation (`data.genes`: outdated symbols, aliases, Ensembl IDs; QARS -> QARS1): both sides are
    mapped to current symbols and matched when exactly one measured gene shares the label's symbol.
    Ambiguous and unknown labels get no entry (scored without exclusion, as cell-eval2 does)."""
    gene_set = set(genes)
    missing = [p for p in perts if p not in gene_set]
    if not missing:  # every label is a measured gene's name: no table needed (nor its slow import)
        return {}
    from biojepac.data.genes import load_symbols

    table = symbols or load_symbols()
    by_symbol: dict[str, list[str]] = {}
    for g in genes:
        by_symbol.setdefault(table.canonical(g) or g, []).append(g)
    out = {}
    for p in missing:
        sym = table.canonical(p)
        hits = by_symbol.get(sym, []) if sym is not None else []
        if len(hits) == 1:
            out[p] = hits[0]
    return out


def group_sums(x: sp.csr_matrix, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(groups x genes) count sums in float64, each in cell order."""
    return _csr_group_sums(x.indptr, x.indices, x.data, codes, n_groups, x.shape[1])[0]


def bulk_lognorm(sums: np.ndarray) -> np.ndarray:
    totals = sums.sum(axis=1)
    scale = np.zeros_like(totals)
    ok = totals > 0
    scale[ok] = BULK_TARGET_SUM / totals[ok]
    return np.log1p(sums * scale[:, None])


SERIES_E_MAX = 0.05
"""Largest lib / (total - lib) of a group's cells for which the jackknife sums its zero entries by series."""
SERIES_TERMS = 14
"""Series terms: (0.05)^15 / 15 < 1e-20 of the leading term."""


@kernel(parallel=True)
def _jackknife(indptr, indices, data, order, bounds, sums, ts):
    """Delete-one-cell jackknife C_p = (n-1)/n sum_g sum_i (v_ig - mean_i v_ig)^2 per group, with
    v_ig = log1p(TS (P_g - y_ig) / (S_p - l_i)), shifted by b_g = log1p(TS P_g / S_p) as cell-eval2 does.

    Where y_ig = 0, v_ig = log1p(w_g e_i) with w_g = a_g / (1 + a_g), a_g = TS P_g / S_p and
    e_i = l_i / (S_p - l_i); its sums over cells are power series in w_g over the power sums of e_i, so only
    the stored entries need a logarithm each (the zero entries' terms are swapped for theirs). Groups where
    a cell holds more than SERIES_E_MAX of the rest (small groups) take the direct sum over every entry."""
    n_groups, n_genes = sums.shape
    out = np.zeros(n_groups)
    k_max = SERIES_TERMS
    c1 = np.zeros(k_max + 1)  # log1p(z) = sum_k c1[k] z^k
    c2 = np.zeros(k_max + 1)  # log1p(z)^2 = sum_k c2[k] z^k
    harm = 0.0
    for k in range(1, k_max + 1):
        c1[k] = (-1.0) ** (k + 1) / k
        if k >= 2:
            c2[k] = (-1.0) ** k * 2.0 * harm / k
        harm += 1.0 / k
    for p in prange(n_groups):
        lo, hi = bounds[p], bounds[p + 1]
        n = hi - lo
        P = sums[p]
        tot = P.sum()
        if n < 2 or tot <= 0.0:
            continue
        b = np.log1p(ts * P / tot)
        rem = np.empty(n)
        for k in range(lo, hi):
            r = order[k]
            lib = 0.0
            for j in range(indptr[r], indptr[r + 1]):
                lib += data[j]
            rem[k - lo] = tot - lib
        s1 = np.zeros(n_genes)
        s2 = np.zeros(n_genes)
        e = (tot - rem) / rem
        if rem.min() > 0.0 and e.max() <= SERIES_E_MAX:
            m = np.zeros(k_max + 1)  # power sums of e
            pw = np.ones(n)
            for k in range(1, k_max + 1):
                pw *= e
                m[k] = pw.sum()
            wg = np.empty(n_genes)
            for g in range(n_genes):
                a = ts * P[g] / tot
                w = a / (1.0 + a)
                wg[g] = w
                wk = 1.0
                t1 = 0.0
                t2 = 0.0
                for k in range(1, k_max + 1):
                    wk *= w
                    t1 += c1[k] * wk * m[k]
                    t2 += c2[k] * wk * m[k]
                s1[g] = t1
                s2[g] = t2
            for k in range(lo, hi):
                r = order[k]
                ei = e[k - lo]
                ri = rem[k - lo]
                for j in range(indptr[r], indptr[r + 1]):
                    g = indices[j]
                    t0 = np.log1p(wg[g] * ei)
                    v = np.log1p(ts * (P[g] - data[j]) / ri) - b[g]
                    s1[g] += v - t0
                    s2[g] += v * v - t0 * t0
        else:
            for k in range(lo, hi):
                r = order[k]
                ri = rem[k - lo]
                j = indptr[r]
                end = indptr[r + 1]
                for g in range(n_genes):
                    y = 0.0
                    if j < end and indices[j] == g:
                        y = data[j]
                        j += 1
                    v = np.log1p(ts * (P[g] - y) / ri) if ri > 0 else 0.0
                    v -= b[g]
                    s1[g] += v
                    s2[g] += v * v
        q = 0.0
        for g in range(n_genes):
            q += s2[g] - s1[g] ** 2 / n
        out[p] = max(((n - 1) / n) * q, 0.0)
    return out


def jackknife(sc: CountScreen, sums: np.ndarray) -> np.ndarray:
    order = np.argsort(sc.codes, kind="stable")
    bounds = np.searchsorted(sc.codes[order], np.arange(sums.shape[0] + 1))
    return _jackknife(sc.x.indptr, sc.x.indices, sc.x.data, order, bounds, sums, BULK_TARGET_SUM)


def cosine_distances(pe: np.ndarray, re: np.ndarray) -> np.ndarray:
    """1 - cos between every predicted (rows) and real (columns) effect; a zero norm gives 1; in [0, 2]."""
    sim = pe @ re.T
    denom = np.sqrt(np.einsum("ig,ig->i", pe, pe))[:, None] * np.sqrt(np.einsum("jg,jg->j", re, re))[None, :]
    cos = np.zeros_like(sim)
    nz = denom != 0
    cos[nz] = sim[nz] / denom[nz]
    return np.clip(1.0 - cos, 0.0, 2.0)


def sig_jaccard(rs: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """|R & P| / |R | P| per row of two significance masks; 1 when both are empty."""
    tp = (rs & ps).sum(1)
    union = rs.sum(1) + ps.sum(1) - tp
    return np.where(union == 0, 1.0, tp / np.maximum(union, 1))


def pds_cosine(pred_b, real_b, panel_cols, pred_ctrl: np.ndarray | None = None) -> np.ndarray:
    """Rows 1.. of pred_b / real_b are the perturbations (aligned), row 0 the control. The predicted effect is
    taken against the real control, or against `pred_ctrl` (cell-eval2's `control_source: pred`)."""
    keep = np.ones(real_b.shape[1], bool)
    keep[panel_cols] = False
    pe = (pred_b[1:] - (real_b[0] if pred_ctrl is None else pred_ctrl))[:, keep]
    re = (real_b[1:] - real_b[0])[:, keep]
    dist = cosine_distances(pe, re)
    n = len(dist)
    return 1.0 - true_midrank(dist) / (n - 1) if n > 1 else np.ones(n)


def true_midrank(dist: np.ndarray) -> np.ndarray:
    """Per row, the 0-based rank of the diagonal (the true perturbation) among the row's distances, ties as
    ties: the mean of the positions the tied values share (rank 0 = strictly nearest)."""
    match = np.diag(dist)[:, None]
    return (dist < match).sum(axis=1) + ((dist == match).sum(axis=1) - 1) / 2.0


def _drop_target(summed, a, b, tcols):
    """Remove each row's own target-gene term from a summed squared distance, one scalar at a time as
    cell-eval2 does (a scalar float64 square is not always bit-equal to the array one)."""
    out = summed.copy()
    n_row = np.full(len(summed), float(a.shape[1]))
    for k in np.flatnonzero(tcols >= 0):
        c = tcols[k]
        out[k] -= (float(a[k, c]) - float(b[k, c])) ** 2
        n_row[k] -= 1
    return out, n_row


def expr_mse(pred_b, real_b, pred_c, real_c, tcols) -> tuple[np.ndarray, np.ndarray]:
    """(N_p, D_p) per perturbation; the metric is N.sum() / D.sum()."""
    pm, rm = pred_b[1:], real_b[1:]
    n_genes = pm.shape[1]
    w = 1.0 / np.where(tcols >= 0, n_genes - 1.0, float(n_genes))
    term = np.minimum(pred_c[1:], 1.0 * real_c[1:])
    claim = float((term * w).sum())
    if claim > 0.0:
        dev = pm - pm.mean(axis=0)
        s1 = np.einsum("ij,i->j", dev, w)
        s2 = np.einsum("ij,ij,i->j", dev, dev, w)
        wsum = np.full(n_genes, float(w.sum()))
        cnt = np.full(n_genes, float(len(pm)))
        for k in np.flatnonzero(tcols >= 0):
            c = tcols[k]
            v = dev[k, c]
            s1[c] -= w[k] * v
            s2[c] -= w[k] * v * v
            wsum[c] -= w[k]
            cnt[c] -= 1.0
        ok = (cnt >= 2.0) & (wsum > 0.0)
        budget = float(np.maximum(s2[ok] - s1[ok] ** 2 / wsum[ok], 0.0).sum()) if ok.any() else 0.0
        ratio = budget / claim
        if ratio < 1.0:
            term = term * ratio
    d = pm - rm
    num, n_row = _drop_target(np.einsum("ij,ij->i", d, d) - term - real_c[1:], pm, rm, tcols)
    ctrl = np.broadcast_to(real_b[0], rm.shape)
    e = rm - ctrl
    den, _ = _drop_target(np.einsum("ij,ij->i", e, e) - real_c[1:] - np.full(len(rm), real_c[0]), rm, ctrl, tcols)
    return num / n_row, den / n_row


@dataclasses.dataclass(frozen=True)
class DETable:
    """One side's DE over the kept genes: perturbations x kept genes."""

    lfc: np.ndarray
    pval: np.ndarray
    padj: np.ndarray


def _scanpy_pvalues(u, nnz, ties, ctrl_ties, n_per_group):
    """scanpy's `wilcoxon(tie_correct=True)` p-values from the U statistics, operation for operation."""
    n2 = n_per_group[0]
    n1 = n_per_group[1:, None]
    zc = n2 - nnz[0]
    zp = n1 - nnz[1:]
    u1 = u[1:] + nnz[1:] * zc + 0.5 * zp * zc
    rank_sum = u1 + n1 * (n1 + 1) / 2
    zeros = zp + zc
    tie_sum = ctrl_ties + ties[1:] + (zeros - 1.0) * zeros * (zeros + 1.0)
    size = n1 + n2
    tc = 1.0 - tie_sum / (size**3 - size)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(tc * n1 * n2 * (n1 + n2 + 1) / 12.0)
        z = (rank_sum - (n1 * ((n1 + n2 + 1) / 2.0))) / std
    z[np.isnan(z)] = 0
    return 2 * scipy.special.ndtr(-np.abs(z))


def cpm_divisors(x: sp.csr_matrix) -> np.ndarray:
    """scanpy normalize_total(target_sum=1e6)'s divisor per cell: total / 1e6, 1 for an empty cell."""
    per = row_totals(x.indptr, x.data) / CPM_TARGET_SUM
    per[per == 0] = 1.0
    return per


def _bh(p: np.ndarray) -> np.ndarray:
    """scipy's false_discovery_control(method='bh') per row."""
    m = p.shape[1]
    order = np.argsort(p, axis=1)
    ps = np.take_along_axis(p, order, axis=1) * (m / np.arange(1, m + 1))
    ps = np.minimum.accumulate(ps[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(ps)
    np.put_along_axis(out, order, np.clip(ps, 0, 1), axis=1)
    return out


def de_table(sc: CountScreen, workers: int = 2, control: CountScreen | None = None) -> tuple[DETable, np.ndarray]:
    """DE of each perturbation vs the control (group 0) of the screen itself, or of `control`'s screen.
    Returns the table over the kept genes and the kept mask (control mean CPM > 5)."""
    n_per = np.bincount(sc.codes, minlength=len(sc.perts) + 1)
    per = cpm_divisors(sc.x)
    if control is None:
        rows = np.arange(sc.x.shape[0])
        sources = [Source(sc.x.indptr, sc.x.indices, sc.x.data, rows, sc.codes, per)]
    else:
        rows = np.flatnonzero(sc.codes > 0)
        ctrl = np.flatnonzero(control.codes == 0)
        n_per[0] = len(ctrl)
        cx = control.x
        sources = [Source(sc.x.indptr, sc.x.indices, sc.x.data, rows, sc.codes[rows], per[rows]),
                   Source(cx.indptr, cx.indices, cx.data, ctrl, np.zeros(len(ctrl), np.int64), cpm_divisors(cx)[ctrl])]
    st = wilcoxon_stats(sources, len(n_per), sc.x.shape[1], workers)
    means = st.cpm_sums / n_per[:, None]
    kept = means[0] > MIN_CTRL_CPM
    lfc = np.log2((means[1:, kept] + LFC_EPS) / (means[0, kept] + LFC_EPS))
    k = np.flatnonzero(kept)
    pval = _scanpy_pvalues(st.u[:, k], st.nnz[:, k], st.ties[:, k], st.ctrl_ties[k], n_per.astype(np.float64))
    return DETable(lfc, pval, _bh(pval) if kept.any() else pval), kept


def on_genes(table: DETable, kept: np.ndarray, axis: np.ndarray) -> DETable:
    """The table over the genes `axis` (a mask over all genes); genes this side's control filter dropped are
    absent from its table (cell-eval2 inner-joins them away) and read NaN here."""
    dst, src = np.flatnonzero(kept[axis]), np.flatnonzero(axis[kept])
    out = []
    for a in (table.lfc, table.pval, table.padj):
        full = np.full((a.shape[0], int(axis.sum())), np.nan)
        full[:, dst] = a[:, src]
        out.append(full)
    return DETable(*out)


def de_metrics(real: DETable, pred: DETable, own: np.ndarray, genes: np.ndarray) -> dict[str, np.ndarray]:
    """The four DE metrics per perturbation over one gene axis (NaN marks a gene absent from a side's table).
    `own` (perts x genes) marks each perturbation's target gene."""
    with np.errstate(invalid="ignore"):
        rs = (real.padj < ALPHA) & ~own
        ps = (pred.padj < ALPHA) & ~own
    jac = sig_jaccard(rs, ps)
    defined_r = np.isfinite(real.lfc) & (real.lfc != 0)
    defined_p = np.isfinite(pred.lfc) & (pred.lfc != 0)
    match = defined_r & defined_p & (np.sign(pred.lfc) == np.sign(real.lfc))
    n_conf = rs.sum(1)
    scored = ps & defined_r
    n_pred = scored.sum(1)
    k = (scored & match).sum(1)
    mx = np.maximum(n_pred, n_conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        fid = np.where(mx == 0, np.nan, k / mx)
    # reach: rank the real significant genes both tables hold by the prediction's confidence
    reach = np.full(len(rs), np.nan)
    in_pred = ~np.isnan(pred.pval)
    rank_padj = np.where(np.isnan(pred.padj), np.inf, pred.padj)
    rank_p = np.where(np.isnan(pred.pval), np.inf, pred.pval)
    abs_l = np.where(np.isnan(pred.lfc), -np.inf, np.abs(pred.lfc))
    for i in np.flatnonzero(n_conf > 0):
        idx = np.flatnonzero(rs[i] & in_pred[i])
        o = np.lexsort((genes[idx], -abs_l[i, idx], rank_p[i, idx], rank_padj[i, idx], ~ps[i, idx]))
        idx = idx[o]
        nd = np.cumsum(defined_r[i, idx])
        nm = np.cumsum(match[i, idx])
        with np.errstate(invalid="ignore", divide="ignore"):
            pur = np.where(nd > 0, nm / np.maximum(nd, 1), np.nan)
        hit = nd[pur >= REACH_P0]
        reach[i] = (hit.max() if hit.size else 0) / n_conf[i]
    # LFC NMAE over the real gate; a predicted LFC that is missing or not finite counts as 0
    gate = rs & np.isfinite(real.lfc)
    pl = np.where(np.isfinite(pred.lfc), pred.lfc, 0.0)
    n_gate = gate.sum(1)
    num = np.where(gate, np.abs(pl - np.where(gate, real.lfc, 0)), 0).sum(1)
    den = np.where(gate, np.abs(np.where(gate, real.lfc, 0)), 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        nmae = np.where((n_gate >= LFC_MIN_GATE) & (den > 0), (num / n_gate) / (den / n_gate), np.nan)
    return {"de_wilcoxon_direction_fidelity_yield_raw": fid, "de_wilcoxon_direction_reach_raw": reach,
            "de_wilcoxon_sig_jaccard": jac, "de_wilcoxon_lfc_nmae": nmae}


@dataclasses.dataclass(frozen=True)
class Side:
    """What the metrics read of one file: pseudobulks, jackknife corrections and the DE table."""

    bulk: np.ndarray
    """(1 + perts) x genes log pseudobulk; row 0 the control."""
    jack: np.ndarray
    """Jackknife correction per group."""
    de: DETable
    kept: np.ndarray
    """Genes the DE table holds (its control's mean CPM above 5)."""


def side(sc: CountScreen, de_control: CountScreen | None = None, workers: int = 2) -> Side:
    """Summarise one file. With `de_control`, its DE runs against that screen's control cells instead of its
    own (cell-eval2's `control_source: real` for a prediction)."""
    sums = group_sums(sc.x, sc.codes, len(sc.perts) + 1)
    de, kept = de_table(sc, workers=workers, control=de_control)
    return Side(bulk_lognorm(sums), jackknife(sc, sums), de, kept)


def check_alike(pred: CountScreen, real: CountScreen) -> None:
    if not np.array_equal(pred.genes, real.genes):
        raise InputError(f"{pred.name}: genes differ from {real.name} (names and order must match)")
    if not np.array_equal(pred.perts, real.perts):
        missing = sorted(set(real.perts) ^ set(pred.perts))[:5]
        raise InputError(f"{pred.name}: perturbation labels differ from {real.name}, e.g. {missing}")


def score_sides(ps: Side, rs: Side, tcols: np.ndarray, genes: np.ndarray,
                control_source: str = "real") -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-perturbation metrics and the aggregates of one (prediction, reference) pair of summaries.
    `control_source="pred"` takes the predicted effects against the prediction's own control (cell-eval2's
    setting for the split-half replicate)."""
    out = {"pds_cosine": pds_cosine(ps.bulk, rs.bulk, np.unique(tcols[tcols >= 0]),
                                    ps.bulk[0] if control_source == "pred" else None)}
    num, den = expr_mse(ps.bulk, rs.bulk, ps.jack, rs.jack, tcols)
    out["expr_mse_unbiased_capped"] = num
    out["expr_distance_unbiased"] = den
    axis = rs.kept | ps.kept
    kidx = np.flatnonzero(axis)
    own = tcols[:, None] == kidx[None, :]
    out.update(de_metrics(on_genes(rs.de, rs.kept, axis), on_genes(ps.de, ps.kept, axis), own, genes[axis]))
    return out, aggregate(out)


def aggregate(per: dict[str, np.ndarray]) -> dict[str, float]:
    """cell-eval2's `mean` row: NaN-skipping means, and the ratio of sums over perturbations where both parts
    are finite."""
    with np.errstate(invalid="ignore"):
        agg = {m: float(np.nanmean(per[m])) if np.any(~np.isnan(per[m])) else float("nan")
               for m in METRICS if m != "expr_mse_unbiased_capped"}
        num, den = per["expr_mse_unbiased_capped"], per["expr_distance_unbiased"]
        ok = np.isfinite(num) & np.isfinite(den)
        agg["expr_mse_unbiased_capped_norm"] = float(num[ok].sum() / den[ok].sum()) if ok.any() else float("nan")
    return agg


def score_pair(pred: CountScreen, real: CountScreen, target_gene_map: dict | None = None,
               workers: int = 2) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-perturbation metrics (rows = real.perts) and the aggregates of one context."""
    check_alike(pred, real)
    tcols = target_columns(real.perts, real.genes, target_gene_map)
    return score_sides(side(pred, real, workers), side(real, workers=workers), tcols, real.genes)
