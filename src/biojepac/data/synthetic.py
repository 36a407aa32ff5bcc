"""Synthetic CRISPRi screens with a known causal ground truth: the embedded default dataset.

The generative story, in order:
1. A shared gene regulatory network: a DAG of programs (complexes whose member genes regulate a shared
   target set) plus individual edges whose regulators are picked by preferential attachment, so a few
   hubs regulate many genes. `W[target, regulator]` acts on log expression.
2. Contexts (cell lines): each has its own baseline log expression, a few genes switched off, and a
   fraction of edges rewired. Off genes regulate nothing in that context.
3. A knockdown multiplies its target's expression by `1 - efficiency` (per guide). In log space that is
   an input `u = log(1 - eff)` on the target, and the steady state of `y = b + W y + u` moves by
   `(I - W)^-1 u`; on a DAG the target itself moves by exactly `u`, everything downstream follows.
   Some targets have guides that fail (no effect anywhere), and a target that is off in a context
   has no effect there either.
4. Cells: negative-binomial counts around `library_size * composition`, with mild per-gene batch
   factors; `non-targeting` controls are a sizeable share of every context.

Ground truth convention (`adata.uns["biojepac"]["truth"]`): for every (context, perturbation),
    delta = log1p(T * E[q | pert]) - log1p(T * E[q | control])
where `q` is a cell's expected composition (counts / total counts), averaged over the guides and
batches a cell is equally likely to get, and `T = cfg.target_sum` (1e4), i.e. the space of
`sc.pp.normalize_total(target_sum=1e4)` followed by `sc.pp.log1p`. Empirical pseudobulk deltas
(mean of log1p over cells) differ from this by Jensen's gap but correlate with it closely.
`truth["control_log1p"]` (contexts x genes, rows named by `truth["control_context"]`) holds
log1p(T * E[q | control]), so `control_log1p + delta` is the expected perturbed profile.
"""

import dataclasses
import pathlib
import typing

import anndata as ad
import beartype
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from jaxtyping import Float, Int, jaxtyped

from biojepac.data import schema
from biojepac.io import write_h5ad_atomic


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    n_genes: int = 500
    """Number of genes (var); every gene is a node of the regulatory network."""
    n_perts: int = 60
    """Number of distinct single-gene knockdown targets (the same targets in every context)."""
    n_combos: int = 0
    """Number of two-gene combinations `A+B` of targets, screened in every context (effects add in log space)."""
    n_contexts: int = 3
    """Number of contexts (cell lines), named `ctx0`, `ctx1`, ..."""
    cells_per_pert: int = 60
    """Mean cells per (context, perturbation); each draws uniformly within +-`cells_spread`."""
    cells_spread: float = 0.25
    """Relative spread of cells per (context, perturbation) around `cells_per_pert`."""
    control_fraction: float = 0.2
    """Share of each context's cells that carry non-targeting guides."""
    n_batches: int = 2
    """Batches `b0`, `b1`, ...; every cell is assigned one uniformly, in every context."""
    guides_per_target: int = 2
    """Guides per target gene, each with its own knockdown efficiency."""
    n_control_guides: int = 4
    """Distinct non-targeting guides."""
    mean_in_degree: float = 1.0
    """Mean number of individual (non-program) regulators per gene (Poisson), so the network is sparse."""
    programs_per_gene: float = 0.15
    """Number of regulatory programs (complexes of co-regulating genes) per gene."""
    program_members: float = 4.0
    """Mean member genes per program; knocking down any member has a similar downstream effect."""
    program_targets: float = 10.0
    """Scale of the (Pareto-tailed) number of genes a program regulates."""
    attachment_offset: float = 1.0
    """Preferential attachment: a regulator is chosen with weight `out_degree + offset`; smaller = bigger hubs."""
    edge_weight: tuple[float, float] = (0.4, 1.0)
    """Range of |edge weight| in log space, before dividing by sqrt(in-degree)."""
    activating_fraction: float = 0.6
    """Share of edges that activate (positive weight); the rest repress."""
    rewire_fraction: float = 0.1
    """Share of edges moved to a new downstream target in each context other than the first."""
    off_fraction: float = 0.05
    """Share of genes switched off (zero expression, no regulation) in each context."""
    inert_fraction: float = 0.1
    """Share of targets whose guides all fail, so the perturbation has no effect anywhere."""
    efficiency_beta: tuple[float, float] = (6.0, 2.0)
    """Beta(a, b) of per-guide knockdown efficiency (mean a / (a + b)); clipped to [0.2, 0.95]."""
    baseline_sd: float = 1.2
    """SD of shared baseline log expression across genes."""
    context_shift_sd: float = 0.4
    """SD of each context's per-gene deviation from the shared baseline (log space)."""
    batch_sd: float = 0.1
    """SD of per-(batch, gene) multiplicative batch factors (log space): mild."""
    median_library: float = 5000.0
    """Median total UMI count per cell."""
    library_sd: float = 0.35
    """SD of log library size across cells."""
    nb_theta: float = 10.0
    """Median negative-binomial inverse dispersion per gene (variance = mu + mu^2 / theta)."""
    n_features: int = 16
    """Dimension of `varm["network_features"]`, a noisy spectral embedding of each gene's downstream effects."""
    feature_noise: float = 0.3
    """Gaussian noise added to the features, relative to each feature's SD."""
    target_sum: float = 1e4
    """Normalisation target T that the stored truth assumes (normalize_total(target_sum=T) + log1p)."""
    chunk_cells: int = 4096
    """Cells sampled per chunk, which bounds memory at chunk_cells x n_genes floats."""


ScreenPreset = typing.Literal["tiny", "demo", "realistic"]
"""Names of the synthetic screen sizes (`PRESETS`); the neural models' presets are `models.base.Preset`."""

PRESETS = {
    "tiny": SyntheticConfig(n_genes=60, n_perts=12, n_contexts=2, cells_per_pert=30, n_features=8),
    "demo": SyntheticConfig(n_genes=500, n_perts=60, n_contexts=3, cells_per_pert=60),
    "realistic": SyntheticConfig(
        n_genes=2000, n_perts=300, n_contexts=3, cells_per_pert=112, cells_spread=0.1, guides_per_target=3
    ),
}
"""Named sizes: `tiny` for tests (< 1 s), `demo` for the README demo, `realistic` for benchmarks."""


def get_screen_preset(name: ScreenPreset, **overrides) -> SyntheticConfig:
    """A preset, with any fields replaced."""
    return dataclasses.replace(PRESETS[name], **overrides)


def make_synthetic_screen(cfg: SyntheticConfig, seed: int) -> ad.AnnData:
    """A canonical screen of raw counts (CSR float32) with its causal truth in `uns["biojepac"]`."""
    assert cfg.n_perts <= cfg.n_genes, f"n_perts={cfg.n_perts} > n_genes={cfg.n_genes}"
    # One child generator per stage, so changing one stage's size leaves the others' draws intact.
    rng_net, rng_ctx, rng_pert, rng_cells, rng_counts, rng_feat = [
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    ]
    genes = [f"SYN{i + 1:04d}" for i in range(cfg.n_genes)]
    contexts = [f"ctx{c}" for c in range(cfg.n_contexts)]
    batches = [f"b{b}" for b in range(cfg.n_batches)]

    order, reg, tgt, w = make_network(cfg, rng_net)
    base_g = rng_ctx.normal(0.0, cfg.baseline_sd, cfg.n_genes)
    base_cg, w_cg = make_contexts(cfg, base_g, order, reg, tgt, w, rng_ctx)
    batch_bg = rng_ctx.normal(0.0, cfg.batch_sd, (cfg.n_batches, cfg.n_genes))
    w_gg = np.zeros((cfg.n_genes, cfg.n_genes))
    np.add.at(w_gg, (tgt, reg), w)
    features_gf = make_network_features(cfg, w_gg, order, rng_feat)

    # Targets: expressed genes (CRISPRi screens target expressed genes), upstream regulators preferred
    # the way screens favour essential genes and transcription factors.
    expressed = np.flatnonzero(base_g > np.quantile(base_g, 0.3))
    p = 1.0 + count_descendants(reg, tgt, order)[expressed]
    p /= p.sum()
    targets = np.sort(rng_pert.choice(expressed, size=cfg.n_perts, replace=False, p=p))
    eff_tk = np.clip(rng_pert.beta(*cfg.efficiency_beta, (cfg.n_perts, cfg.guides_per_target)), 0.2, 0.95)
    inert_t = rng_pert.random(cfg.n_perts) < cfg.inert_fraction
    eff_tk[inert_t] = 0.0
    combos = rng_pert.choice(cfg.n_perts, size=(4 * cfg.n_combos, 2))
    combos = np.unique(np.sort(combos[combos[:, 0] != combos[:, 1]], axis=1), axis=0)
    combos = combos[rng_pert.permutation(len(combos))[: cfg.n_combos]]
    assert len(combos) == cfg.n_combos, f"could not draw {cfg.n_combos} distinct combos from {cfg.n_perts} targets"

    # Perturbation inputs u on the targets (labels x guides x targets): singles, then combos with matched guides.
    labels = [genes[t] for t in targets] + [f"{genes[targets[a]]}+{genes[targets[b]]}" for a, b in combos]
    u_tkt = np.zeros((cfg.n_perts, cfg.guides_per_target, cfg.n_perts))
    u_tkt[np.arange(cfg.n_perts), :, np.arange(cfg.n_perts)] = np.log1p(-eff_tk)
    u_lkt = np.concatenate([u_tkt, u_tkt[combos[:, 0]] + u_tkt[combos[:, 1]]], axis=0)

    comp_clkbg, delta_kg, control_cg = get_expected(cfg, base_cg, w_cg, batch_bg, order, targets, u_lkt)
    off_cg = ~np.isfinite(base_cg)
    has_effect_single = ~inert_t[None, :] & ~off_cg[:, targets]  # contexts x targets
    has_effect_combo = has_effect_single[:, combos[:, 0]] | has_effect_single[:, combos[:, 1]]
    has_effect = np.concatenate([has_effect_single, has_effect_combo], axis=1).reshape(-1)

    obs, row_c, row_l, row_k, row_b = make_cells(cfg, contexts, batches, labels, rng_cells)
    library = cfg.median_library * np.exp(rng_cells.normal(0.0, cfg.library_sd, len(obs)))
    theta_g = cfg.nb_theta * np.exp(rng_counts.normal(0.0, 0.5, cfg.n_genes))
    mean_of = lambda rows: library[rows, None] * comp_clkbg[row_c[rows], row_l[rows], row_k[rows], row_b[rows]]
    x = sample_counts(mean_of, len(obs), theta_g, cfg.chunk_cells, rng_counts)

    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    adata.varm["network_features"] = features_gf
    ctx_e, tgt_e, reg_e = np.nonzero(w_cg)  # each context's live edges, after rewiring and switching genes off
    adata.uns[schema.UNS_KEY] = {
        "source": "biojepac.data.synthetic",
        "seed": seed,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "x_kind": "counts",
        "truth": {
            "context": np.repeat(contexts, len(labels)),
            "target_gene": np.tile(np.array(labels), cfg.n_contexts),
            "delta": delta_kg,
            "has_effect": has_effect,
            "target_sum": cfg.target_sum,
            "control_context": np.array(contexts),
            "control_log1p": control_cg,
            "guide_efficiency": eff_tk.astype(np.float32),
            "guide_target": np.array([genes[t] for t in targets]),
        },
        "network": {
            "context": np.array(contexts)[ctx_e],
            "regulator": np.array(genes)[reg_e],
            "target": np.array(genes)[tgt_e],
            "weight": w_cg[ctx_e, tgt_e, reg_e].astype(np.float32),
        },
    }
    return adata


def get_expected(cfg: SyntheticConfig, base_cg, w_cg, batch_bg, order, targets, u_lkt):
    """Expected compositions per (context, label, guide, batch), label 0 = control, and the truth.

    Returns (compositions C x L+1 x K x B x G float32, truth deltas C*L x G, control log1p C x G); see the
    module docstring for the truth's definition.
    """
    n_labels = len(u_lkt)
    comp_clkbg, delta_clg, control_cg = [], [], []
    for c in range(cfg.n_contexts):
        # Columns of (I - W)^-1 at the targets: each target's total effect on every gene.
        total_gt = solve_total(w_cg[c], order, np.eye(cfg.n_genes)[:, targets])
        shift_lkg = (u_lkt.reshape(-1, len(targets)) @ total_gt.T).reshape(n_labels, cfg.guides_per_target, cfg.n_genes)
        logx_lkg = np.concatenate([np.zeros((1,) + shift_lkg.shape[1:]), shift_lkg]) + base_cg[c]
        comp_lkbg = get_composition(logx_lkg[:, :, None, :] + batch_bg[None, None])
        # Guides and batches are equally likely per cell, so a label's expectation is their mean.
        expect_lg = comp_lkbg.mean(axis=(1, 2)) * cfg.target_sum
        comp_clkbg.append(comp_lkbg.astype(np.float32))
        delta_clg.append(np.log1p(expect_lg[1:]) - np.log1p(expect_lg[0]))
        control_cg.append(np.log1p(expect_lg[0]))
    delta_kg = np.concatenate(delta_clg).astype(np.float32)
    return np.stack(comp_clkbg), delta_kg, np.stack(control_cg).astype(np.float32)


def make_network(cfg: SyntheticConfig, rng: np.random.Generator):
    """A DAG of programs plus sparse preferential-attachment edges: (topological order, regulator, target, weight).

    A program is a complex of a few member genes that regulate a shared set of target genes, so knocking
    down any member has a similar effect; that shared structure is what makes an unseen perturbation
    predictable from its place in the network. Random edges add gene-specific effects and hubs.
    """
    n = cfg.n_genes
    order = rng.permutation(n)  # order[i] is the i-th gene in topological order
    reg, tgt, w = [], [], []
    for _ in range(max(1, round(n * cfg.programs_per_gene))):
        n_members = min(1 + rng.poisson(cfg.program_members - 1), n // 4)
        member_rank = rng.choice(n // 2, size=n_members, replace=False)
        first_target = member_rank.max() + 1
        n_targets = min(n - first_target, max(2, int(cfg.program_targets * rng.pareto(2.0) + 2)))
        target_rank = rng.choice(np.arange(first_target, n), size=n_targets, replace=False)
        sign = np.where(rng.random(n_targets) < cfg.activating_fraction, 1.0, -1.0)
        w_target = sign * rng.uniform(*cfg.edge_weight, n_targets)
        jitter = rng.uniform(0.7, 1.3, (n_members, n_targets))
        reg.append(np.repeat(order[member_rank], n_targets))
        tgt.append(np.tile(order[target_rank], n_members))
        w.append((w_target[None, :] * jitter).reshape(-1) / np.sqrt(n_members))

    out_degree = np.zeros(n)
    for i in range(1, n):
        n_in = min(rng.poisson(cfg.mean_in_degree), i)
        if n_in == 0:
            continue
        weight = out_degree[order[:i]] + cfg.attachment_offset
        chosen = order[:i][rng.choice(i, size=n_in, replace=False, p=weight / weight.sum())]
        out_degree[chosen] += 1
        sign = np.where(rng.random(n_in) < cfg.activating_fraction, 1.0, -1.0)
        # Dividing by sqrt(in-degree) keeps genes with many regulators from swinging wildly.
        reg.append(chosen)
        tgt.append(np.full(n_in, order[i]))
        w.append(sign * rng.uniform(*cfg.edge_weight, n_in) / np.sqrt(n_in))
    return order, np.concatenate(reg).astype(np.int64), np.concatenate(tgt).astype(np.int64), np.concatenate(w)


def make_contexts(cfg, base_g, order, reg, tgt, w, rng: np.random.Generator):
    """Per-context baselines (-inf = off) and dense weight matrices W[c, target, regulator]."""
    rank = np.empty(cfg.n_genes, dtype=np.int64)
    rank[order] = np.arange(cfg.n_genes)
    base_cg = base_g[None] + rng.normal(0.0, cfg.context_shift_sd, (cfg.n_contexts, cfg.n_genes))
    w_cgg = np.zeros((cfg.n_contexts, cfg.n_genes, cfg.n_genes))
    for c in range(cfg.n_contexts):
        tgt_c = tgt.copy()
        if c > 0:  # the first context keeps the reference wiring
            moved = np.flatnonzero(rng.random(len(reg)) < cfg.rewire_fraction)
            # A new target strictly downstream of the regulator keeps the graph acyclic.
            lo = rank[reg[moved]] + 1
            ok = lo < cfg.n_genes
            tgt_c[moved[ok]] = order[rng.integers(lo[ok], cfg.n_genes)]
        np.add.at(w_cgg[c], (tgt_c, reg), w)
        off = rng.random(cfg.n_genes) < cfg.off_fraction
        base_cg[c, off] = -np.inf
        w_cgg[c][:, off] = 0.0  # an unexpressed gene regulates nothing
    return base_cg, w_cgg


@jaxtyped(typechecker=beartype.beartype)
def get_composition(logx: Float[np.ndarray, "*batch genes"]) -> Float[np.ndarray, "*batch genes"]:
    """exp(logx) normalised over the last (gene) axis; -inf entries become exactly 0."""
    shifted = logx - np.max(logx, axis=-1, keepdims=True)
    x = np.exp(shifted)
    return x / x.sum(axis=-1, keepdims=True)


def make_network_features(cfg: SyntheticConfig, w_gg, order, rng: np.random.Generator):
    """Noisy spectral embedding of each gene's total downstream effect in the shared network.

    Column t of M = (I - W)^-1 - I is what knocking down t does to every other gene (in log space), so its
    top singular directions let a linear map predict an unseen perturbation's effect from its features.
    A randomised SVD (Halko et al. 2011) needs only products with M, i.e. triangular solves.
    """
    k = min(cfg.n_features + 10, cfg.n_genes)
    m_times = lambda x: solve_total(w_gg, order, x) - x
    mt_times = lambda x: solve_total(w_gg, order, x, transpose=True) - x
    q, _ = np.linalg.qr(m_times(rng.normal(size=(cfg.n_genes, k))))
    for _ in range(4):  # power iterations sharpen the spectrum's head
        q, _ = np.linalg.qr(m_times(np.linalg.qr(mt_times(q))[0]))
    _, s, vt = np.linalg.svd(mt_times(q).T, full_matrices=False)
    f = min(cfg.n_features, len(s))
    emb_gf = np.zeros((cfg.n_genes, cfg.n_features))
    emb_gf[:, :f] = vt[:f].T * s[:f]
    noise = rng.normal(size=emb_gf.shape) * emb_gf.std(axis=0, keepdims=True) * cfg.feature_noise
    return (emb_gf + noise).astype(np.float32)


@jaxtyped(typechecker=beartype.beartype)
def solve_total(
    w_gg: Float[np.ndarray, "genes genes"], order: Int[np.ndarray, " genes"], rhs_gk: Float[np.ndarray, "genes k"], transpose: bool = False
) -> Float[np.ndarray, "genes k"]:
    """(I - W)^-1 @ rhs (or its transpose), exploiting that W is strictly lower-triangular in topological order."""
    lower = np.eye(len(order)) - w_gg[np.ix_(order, order)]
    y = scipy.linalg.solve_triangular(lower, rhs_gk[order], lower=True, unit_diagonal=True, trans=1 if transpose else 0)
    out = np.empty_like(y)
    out[order] = y
    return out


def count_descendants(reg, tgt, order) -> np.ndarray:
    """Number of genes downstream of each gene in the shared DAG (reverse topological sweep over bitsets)."""
    n = len(order)
    desc = np.zeros((n, n), dtype=bool)
    children = pd.Series(tgt).groupby(reg).apply(np.asarray).to_dict()
    for g in order[::-1]:
        kids = children.get(g)
        if kids is not None:
            desc[g, kids] = True
            desc[g] |= desc[kids].any(axis=0)
    return desc.sum(axis=1)


def make_cells(cfg: SyntheticConfig, contexts, batches, labels, rng: np.random.Generator):
    """Shuffled cell table: canonical obs plus integer (context, label, guide, batch) codes per cell."""
    n_labels = len(labels)
    lo, hi = round((1 - cfg.cells_spread) * cfg.cells_per_pert), round((1 + cfg.cells_spread) * cfg.cells_per_pert)
    n_cl = rng.integers(lo, hi + 1, (cfg.n_contexts, n_labels))
    n_ctrl = np.round(n_cl.sum(axis=1) * cfg.control_fraction / (1.0 - cfg.control_fraction)).astype(np.int64)
    counts_cl = np.concatenate([n_ctrl[:, None], n_cl], axis=1)  # label 0 = control
    row_c = np.repeat(np.repeat(np.arange(cfg.n_contexts), n_labels + 1), counts_cl.reshape(-1))
    row_l = np.repeat(np.tile(np.arange(n_labels + 1), cfg.n_contexts), counts_cl.reshape(-1))
    perm = rng.permutation(len(row_c))
    row_c, row_l = row_c[perm], row_l[perm]
    row_k = np.where(row_l == 0, 0, rng.integers(0, cfg.guides_per_target, len(row_c)))
    ctrl_guide = rng.integers(0, cfg.n_control_guides, len(row_c))
    row_b = rng.integers(0, cfg.n_batches, len(row_c))

    all_labels = np.array([schema.CONTROL] + labels)
    target = all_labels[row_l]
    guide = np.array([
        f"{schema.CONTROL}_g{g}" if t == schema.CONTROL else schema.COMBO_SEP.join(f"{p}_g{k}" for p in t.split(schema.COMBO_SEP))
        for t, k, g in zip(target, row_k, ctrl_guide)
    ])
    obs = pd.DataFrame(
        {
            schema.PERT_COL: pd.Categorical(target),
            schema.CONTEXT_COL: pd.Categorical(np.array(contexts)[row_c]),
            schema.BATCH_COL: pd.Categorical(np.array(batches)[row_b]),
            schema.GUIDE_COL: pd.Categorical(guide),
            schema.PERT_TYPE_COL: pd.Categorical(["CRISPRi"] * len(row_c)),
        },
        index=pd.Index([f"cell{i:06d}" for i in range(len(row_c))]),
    )
    return obs, row_c, row_l, row_k, row_b


def sample_counts(mean_of, n_cells: int, theta_g, chunk: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Negative-binomial counts (gamma-Poisson mixture) in row chunks, assembled as CSR float32.

    The CSR arrays are concatenated by hand: scipy's vstack of many chunks costs more than the sampling.
    """
    indptr, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    for start in range(0, n_cells, chunk):
        mu_ng = mean_of(np.arange(start, min(start + chunk, n_cells)))
        # Gamma(theta, mu / theta) as a float32 standard gamma times the scale: ~3x faster than float64 gamma.
        gamma_ng = rng.standard_gamma(theta_g.astype(np.float32), size=mu_ng.shape, dtype=np.float32)
        counts_ng = rng.poisson(gamma_ng * (mu_ng / theta_g[None, :]))
        rows, cols = np.nonzero(counts_ng)
        indices.append(cols.astype(np.int32))
        data.append(counts_ng[rows, cols].astype(np.float32))
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(rows, minlength=len(counts_ng))))
    n_genes = len(theta_g)
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n_cells, n_genes))


@dataclasses.dataclass(frozen=True)
class SynthCommand:
    out: pathlib.Path = pathlib.Path("synthetic.h5ad")
    """Where to write the screen (.h5ad, raw counts, truth in uns["biojepac"]["truth"])."""
    screen_preset: ScreenPreset = "demo"
    """Size preset: tiny (tests, < 1 s) | demo (the README demo) | realistic (benchmarks)."""
    seed: int = 0
    """Seed; the same seed gives the same file contents."""
    n_combos: int | None = None
    """Override the preset's number of two-gene combinations."""


def run_synth(cmd: SynthCommand) -> pathlib.Path:
    """`biojepac data synth`: generate a screen and write it atomically."""
    overrides = {} if cmd.n_combos is None else {"n_combos": cmd.n_combos}
    adata = make_synthetic_screen(get_screen_preset(cmd.screen_preset, **overrides), cmd.seed)
    write_h5ad_atomic(adata, cmd.out, compression="gzip")
    print(f"wrote {adata.n_obs} cells x {adata.n_vars} genes ({cmd.screen_preset}, seed {cmd.seed}) to {cmd.out}")
    return cmd.out
