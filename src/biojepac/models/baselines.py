"""Strong simple baselines, all behind `PerturbationModel`: each predicts a mean shift (delta) per
(perturbation, context) and adds it to the given control cells.

Every baseline starts from the same fitted statistics of the training screen (log1p):
- `ctrl_cg`: the control mean of each training context;
- `delta_ng`: the pseudobulk delta over control of each training (perturbation, context) condition;
- `base_cg`: the cell-mean delta of each context, i.e. the mean of its perturbations' deltas
  (the VCC baseline predicts `ctrl + base`, the mean of the training perturbation means).
A context absent from training uses the mean of all training deltas for `base` (and is otherwise
treated like any other context).

| kind             | delta for perturbation p in context c                                         |
|------------------|-------------------------------------------------------------------------------|
| control-mean     | 0                                                                             |
| cell-mean        | base_c                                                                        |
| crispr-mean      | base_c, with each target gene moved to its typical on-target fold change      |
| context-transfer | p's measured deltas in other contexts, rescaled to c; else base_c             |
| linear           | base_c + G W P(p) (Ahlmann-Eltze et al. 2025; see `Linear`); combos: sum of singles |
| ridge            | base_c + B φ(p), ridge from features to residual deltas; combos: sum of singles |
| knn              | base_c + similarity-weighted residual deltas of p's k nearest training perts; combos: sum of singles |
| additive         | sum of the measured single deltas of A and B (a seen single: its measured delta) |
"""

import dataclasses
import pathlib
import warnings
from typing import ClassVar, Literal

import anndata as ad
import numpy as np

from biojepac.data import schema
from biojepac.data.pairing import pseudobulk
from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES
from biojepac.features.base import GeneTable
from biojepac.features.expression import pseudobulk_gene_embedding
from biojepac.models.base import shift_controls
from biojepac.models.saved import save_model_dir


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    features: str = DEFAULT_FEATURES
    """Feature spec for linear/ridge/knn (see `biojepac.features.make_provider`): varm|expr|go (default), expr|go, go, onehot, file:PATH."""
    feature_fallback: Literal["error", "cell-mean"] = "error"
    """A perturbation without a feature vector: raise (default), or explicitly predict the cell mean for it."""
    n_components: int = 10
    """linear: number of gene principal components in G (the paper's pca_dim)."""
    ridge: float = 0.1
    """linear: L2 penalty on both sides of the bilinear fit, absolute as in the paper (G and P are in log1p
    units); ridge: L2 penalty relative to the mean squared feature norm."""
    k: int = 5
    """knn: number of neighbours."""
    default_residual: float = 0.3
    """crispr-mean: target expression ratio (perturbed / control) when training has no measured target."""
    transfer_scale: Literal["norm", "lstsq"] = "norm"
    """context-transfer: ratio of effect sizes between contexts (norm), or the least-squares slope, which noise
    in the source context's deltas shrinks toward 0 more (regression dilution)."""
    combo_fallback: Literal["error", "cell-mean"] = "error"
    """additive: an unseen single part raises (default), or explicitly contributes its context's cell-mean delta."""


class MeanShift:
    """Shared fit/save/load; subclasses define `kind`, `_fit_extra` and `delta`."""

    kind: ClassVar[str] = ""

    def __init__(self, cfg: BaselineConfig = BaselineConfig(), features: GeneTable | None = None):
        """`features`: a provider to use instead of building `cfg.features` from the training screen."""
        self.cfg = cfg
        self.s: dict[str, np.ndarray] = {}  # fitted state: arrays only, so save/load needs no pickle
        self.given_features = features
        self.features: GeneTable | None = None

    @property
    def name(self) -> str:
        return self.kind

    def fit(self, train: ad.AnnData) -> "MeanShift":
        groups, means = pseudobulk(train)
        ctx_all = groups[schema.CONTEXT_COL].to_numpy(str)
        is_ctrl = (groups[schema.PERT_COL] == schema.CONTROL).to_numpy()
        contexts = np.unique(ctx_all[is_ctrl])
        no_ctrl = sorted(set(ctx_all) - set(contexts))
        if no_ctrl:
            raise InputError(f"training data: no {schema.CONTROL!r} cells in context {no_ctrl[0]!r}")
        ctrl_cg = means[is_ctrl][np.argsort(ctx_all[is_ctrl])]
        pert_ctx = np.searchsorted(contexts, ctx_all[~is_ctrl])
        delta_ng = means[~is_ctrl] - ctrl_cg[pert_ctx]
        if len(delta_ng) == 0:
            raise InputError("training data: no perturbed cells, only controls")
        base_cg = np.stack([delta_ng[pert_ctx == c].mean(0) if (pert_ctx == c).any() else delta_ng.mean(0)
                            for c in range(len(contexts))])
        self.s = dict(genes=np.asarray(train.var_names, str), contexts=contexts, ctrl_cg=ctrl_cg,
                      labels=groups[schema.PERT_COL].to_numpy(str)[~is_ctrl], pert_ctx=pert_ctx,
                      delta_ng=delta_ng, base_cg=base_cg, base_all=delta_ng.mean(0))
        self._fit_extra(train)
        return self

    def _fit_extra(self, train: ad.AnnData) -> None:
        pass

    def delta(self, target_gene: str, context: str) -> np.ndarray:
        raise NotImplementedError

    def predict(self, controls: np.ndarray, target_gene: str, context: str, seed: int) -> np.ndarray:
        assert self.s, f"{self.kind}: fit or load the model first"
        if controls.shape[1] != len(self.s["genes"]):
            raise InputError(f"{self.kind}: controls have {controls.shape[1]} genes, the model {len(self.s['genes'])}")
        return shift_controls(np.asarray(controls, np.float32), self.delta(target_gene, context))

    # ---- helpers shared by subclasses
    def _ctx(self, context: str) -> int:
        """Row of `context` in the training contexts, or -1 when it was not in training."""
        hits = np.flatnonzero(self.s["contexts"] == context)
        return int(hits[0]) if len(hits) else -1

    def _base(self, context: str) -> np.ndarray:
        c = self._ctx(context)
        return self.s["base_cg"][c] if c >= 0 else self.s["base_all"]

    def _residuals(self) -> np.ndarray:
        """Each training condition's delta minus its context's cell-mean delta."""
        return self.s["delta_ng"] - self.s["base_cg"][self.s["pert_ctx"]]

    def _setup_features(self, train: ad.AnnData, rows: np.ndarray | None = None) -> np.ndarray:
        """Feature rows of the training conditions (`rows`, default all) that have features. Conditions
        without features are left out of the fit, with a warning naming them: nothing is invented for
        them, and predicting such a perturbation still raises unless the caller opted into a fallback."""
        from biojepac.features import resolve_features

        self.features = resolve_features(self.given_features if self.given_features is not None else self.cfg.features, train)
        labels = self.s["labels"]
        rows = np.arange(len(labels)) if rows is None else rows
        miss = set(self.features.missing(labels[rows]))
        keep = rows[np.asarray([not (set(schema.split_combo(lab)) & miss) for lab in labels[rows]], bool)]
        if miss:
            warnings.warn(f"{self.kind}: {len(miss)} training perturbation genes have no "
                          f"{self.features.spec or self.features.name} features ({self.features.explain_missing(sorted(miss))}); "
                          "their conditions are left out of the fit")
        if len(keep) < 2:
            raise InputError(f"{self.kind}: only {len(keep)} training perturbations have {self.features.spec or self.features.name} "
                             f"features ({self.features.source}); at least 2 are needed to fit")
        self.s["fit_rows"] = keep
        p_nl = self.features.vectors(labels[keep]).astype(np.float64)
        # Residuals average to ~0 per context, so features are centred too: no intercept is needed.
        self.s["p_mean"] = p_nl.mean(0)
        return p_nl

    def _phi(self, target_gene: str) -> np.ndarray | None:
        """Features of one label, or None when missing and the caller opted into the cell-mean fallback."""
        assert self.features is not None
        if self.features.missing([target_gene]) and self.features.fallback == "error":
            if self.cfg.feature_fallback == "cell-mean":
                warnings.warn(f"{self.kind}: no {self.features.name} features for {target_gene!r}; predicting the cell mean")
                return None
            spec = self.features.spec or self.features.name
            raise InputError(f"{self.kind}: feature spec {spec!r} ({self.features.source}) has no vector for "
                             f"{self.features.explain_missing([target_gene])}; use a feature spec that covers it "
                             "(e.g. add a source: 'expr|go|file:EMB.npz'), or --feature-fallback cell-mean to "
                             "predict the cell mean for it")
        return self.features.vectors([target_gene])[0].astype(np.float64)

    def _phi_centred(self, target_gene: str) -> np.ndarray | None:
        phi = self._phi(target_gene)
        return None if phi is None else phi - self.s["p_mean"]

    def _additive(self, target_gene: str, context: str) -> np.ndarray:
        """The feature models' delta (linear, ridge, knn): a single's is `_single_delta`; a combination's is the
        sum of its singles' deltas, each the measured delta where that single was measured in this context
        (additive effects: the best simple model of double perturbations), else the model's prediction."""
        parts = [p for p in schema.split_combo(target_gene) if p != schema.CONTROL]
        if len(parts) <= 1:
            return self._single_delta(target_gene, context)
        c = self._ctx(context)
        total = np.zeros(len(self.s["genes"]))
        for part in parts:
            rows = np.flatnonzero((self.s["labels"] == part) & (self.s["pert_ctx"] == c))
            total += self.s["delta_ng"][rows[0]] if len(rows) else self._single_delta(part, context)
        return total

    def _single_delta(self, target_gene: str, context: str) -> np.ndarray:
        raise NotImplementedError

    # ---- persistence: model.json (kind + config) and state.npz (+ features.npz)
    def save(self, dpath: pathlib.Path) -> pathlib.Path:
        assert self.s, f"{self.kind}: fit the model before saving it"

        def write(tmp: pathlib.Path) -> None:
            np.savez(tmp / "state.npz", **self.s)
            if self.features is not None:
                self.features.save(tmp / "features.npz")

        return save_model_dir(dpath, self.kind, dataclasses.asdict(self.cfg), self.s["genes"].tolist(), write)


class ControlMean(MeanShift):
    kind = "control-mean"

    def delta(self, target_gene, context):
        return np.zeros(len(self.s["genes"]))


class CellMean(MeanShift):
    kind = "cell-mean"

    def delta(self, target_gene, context):
        return self._base(context)


class CrisprMean(MeanShift):
    """Cell mean, plus the direct on-target effect: the target's expression ratio learned from training."""

    kind = "crispr-mean"

    def _fit_extra(self, train):
        genes, labels = list(self.s["genes"]), self.s["labels"]
        rows = [(i, genes.index(lab)) for i, lab in enumerate(labels) if lab in genes]
        ratios = []
        for i, g in rows:
            ctrl = np.expm1(self.s["ctrl_cg"][self.s["pert_ctx"][i], g])
            if ctrl > 1e-3:  # a target not expressed in controls says nothing about knockdown strength
                ratios.append(np.expm1(self.s["ctrl_cg"][self.s["pert_ctx"][i], g] + self.s["delta_ng"][i, g]) / ctrl)
        self.s["target_ratio"] = np.asarray(np.median(ratios) if ratios else self.cfg.default_residual)

    def delta(self, target_gene, context):
        d = self._base(context).copy()
        c = self._ctx(context)
        ctrl = self.s["ctrl_cg"][c] if c >= 0 else self.s["ctrl_cg"].mean(0)
        for part in schema.split_combo(target_gene):
            hit = np.flatnonzero(self.s["genes"] == part)
            if len(hit):
                g = hit[0]
                d[g] = np.log1p(np.expm1(ctrl[g]) * float(self.s["target_ratio"])) - ctrl[g]
        return d


class ContextTransfer(MeanShift):
    """The same perturbation measured in other contexts, scaled by how strongly contexts respond.

    Scale s(c <- c') maps context c' deltas onto context c over the perturbations both measured in training
    (1 when they share none): |D_c| / |D_c'| (`norm`, default), or the least-squares slope <D_c, D_c'> / |D_c'|²
    (`lstsq`), which noise in D_c' (pseudobulk deltas of few cells) biases toward 0 more than the norm ratio.
    """

    kind = "context-transfer"

    def _fit_extra(self, train):
        n_ctx, labels, ctx = len(self.s["contexts"]), self.s["labels"], self.s["pert_ctx"]
        scale = np.ones((n_ctx, n_ctx))
        for a in range(n_ctx):
            for b in range(n_ctx):
                shared = np.intersect1d(labels[ctx == a], labels[ctx == b])
                if a != b and len(shared):
                    da = self.s["delta_ng"][[self._row(lab, a) for lab in shared]]
                    db = self.s["delta_ng"][[self._row(lab, b) for lab in shared]]
                    if self.cfg.transfer_scale == "norm":
                        scale[a, b] = float(np.sqrt((da * da).sum() / max((db * db).sum(), 1e-12)))
                    else:
                        scale[a, b] = float((da * db).sum() / max((db * db).sum(), 1e-12))
        self.s["scale_cc"] = scale

    def _row(self, label, c):
        return int(np.flatnonzero((self.s["labels"] == label) & (self.s["pert_ctx"] == c))[0])

    def delta(self, target_gene, context):
        c = self._ctx(context)
        rows = np.flatnonzero(self.s["labels"] == target_gene)
        if c >= 0 and (self.s["pert_ctx"][rows] == c).any():  # measured here: use it
            return self.s["delta_ng"][rows[self.s["pert_ctx"][rows] == c][0]]
        if len(rows) == 0:
            return self._base(context)
        src = self.s["pert_ctx"][rows]
        scale = self.s["scale_cc"][c, src] if c >= 0 else np.ones(len(rows))
        return (self.s["delta_ng"][rows] * scale[:, None]).mean(0)


def _ridge_solve(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """argmin_X |a X - b|² + lam' |X|², with lam' = lam x mean squared row norm of a (scale-free)."""
    lam_eff = lam * float((a * a).sum(1).mean()) if len(a) else lam
    return np.linalg.solve(a.T @ a + lam_eff * np.eye(a.shape[1]), a.T @ b)


class Linear(MeanShift):
    """Ahlmann-Eltze et al. (2025), as their code (`run_linear_pretrained_model.R`) does it:

    Y ≈ G W Pᵀ + b, with
    - Y (genes x training perturbations): pseudobulk deltas over the context's controls, single-gene
      perturbations only (a combination's effect is not one gene's);
    - b: the mean delta per gene (here per context: `base_c`, the cell-mean delta), so Y - b is the residual;
    - G (genes x K): the genes' top-K PCA scores of the training pseudobulk deltas
      (`features.expression.pseudobulk_gene_embedding`, the same as the `expr` feature spec);
    - P (perturbations x L): the perturbation embedding, from the feature spec. With the default on a
      screen that ships no gene embedding (`varm|expr|go` = `expr|go`), a measured target's row is exactly
      its row of G (the paper's P); an unmeasured target's is its GO vector mapped into G's coordinates
      (the paper's "another knowledge source"); a screen that ships one (`varm`) gives P from it instead;
    - W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹: ridge on both sides, λ absolute (the paper's 0.1).
    A combination A+B is predicted additively, as the sum of its singles' deltas (a single measured in
    this context: its measured delta; otherwise b + G W P). Deviations from the paper: b per context;
    P is not restricted to the training screen's genes (the fallback source covers the rest); G is the PCA
    of the pseudobulk deltas, not of the expression (the control profile shared by every condition would
    spend a component; on the synthetic tasks the deltas' G scored higher, benchmarks/results/features.md);
    and P is centred over the training perturbations (Y - b is centred, so without that the fit has no
    intercept on P's side: a perturbation with average features would not get the cell mean, and an
    affine ground truth, tests/models/test_baselines.py, would not be recovered)."""

    kind = "linear"

    def _fit_extra(self, train):
        labels = self.s["labels"]
        singles = np.flatnonzero([schema.COMBO_SEP not in lab for lab in labels])
        p_nl = self._setup_features(train, singles if len(singles) >= 2 else None)
        y_ng = self._residuals()[self.s["fit_rows"]]
        g_gk = pseudobulk_gene_embedding(self.s["delta_ng"], self.cfg.n_components)  # the `expr` spec's G
        lam = self.cfg.ridge
        left_kn = np.linalg.solve(g_gk.T @ g_gk + lam * np.eye(g_gk.shape[1]), g_gk.T @ y_ng.T)
        p_nl = p_nl - self.s["p_mean"]
        w_kl = np.linalg.solve(p_nl.T @ p_nl + lam * np.eye(p_nl.shape[1]), (left_kn @ p_nl).T).T
        self.s.update(g_gk=g_gk, w_kl=w_kl)

    def _single_delta(self, target_gene, context):
        phi = self._phi_centred(target_gene)
        base = self._base(context)
        return base if phi is None else base + self.s["g_gk"] @ (self.s["w_kl"] @ phi)

    def delta(self, target_gene, context):
        return self._additive(target_gene, context)


class Ridge(MeanShift):
    kind = "ridge"

    def _fit_extra(self, train):
        p_nl = self._setup_features(train)
        self.s["b_lg"] = _ridge_solve(p_nl - self.s["p_mean"], self._residuals()[self.s["fit_rows"]], self.cfg.ridge)

    def _single_delta(self, target_gene, context):
        phi = self._phi_centred(target_gene)
        base = self._base(context)
        return base if phi is None else base + phi @ self.s["b_lg"]

    def delta(self, target_gene, context):
        return self._additive(target_gene, context)


class Knn(MeanShift):
    kind = "knn"

    def _fit_extra(self, train):
        p_nl = self._setup_features(train)
        self.s["p_unit"] = p_nl / np.linalg.norm(p_nl, axis=1, keepdims=True).clip(1e-12)

    def _single_delta(self, target_gene, context):
        phi = self._phi(target_gene)
        base = self._base(context)
        if phi is None:
            return base
        sim = self.s["p_unit"] @ (phi / max(np.linalg.norm(phi), 1e-12))
        top = np.argsort(-sim, kind="stable")[: self.cfg.k]
        w = sim[top].clip(0)
        w = w / w.sum() if w.sum() > 0 else np.full(len(top), 1 / len(top))
        return base + w @ self._residuals()[self.s["fit_rows"][top]]

    def delta(self, target_gene, context):
        return self._additive(target_gene, context)


class Additive(MeanShift):
    """Combination = sum of its singles' measured deltas in the context (other contexts' mean if unmeasured there)."""

    kind = "additive"

    def _single(self, gene: str, context: str) -> np.ndarray | None:
        rows = np.flatnonzero(self.s["labels"] == gene)
        here = rows[self.s["pert_ctx"][rows] == self._ctx(context)]
        if len(here):
            return self.s["delta_ng"][here[0]]
        return self.s["delta_ng"][rows].mean(0) if len(rows) else None

    def delta(self, target_gene, context):
        parts = [p for p in schema.split_combo(target_gene) if p != schema.CONTROL]
        found = {p: self._single(p, context) for p in parts}
        missing = [p for p, d in found.items() if d is None]
        if missing and self.cfg.combo_fallback == "error":
            raise InputError(f"additive: no measured training effect for {missing} (in {target_gene!r}); "
                             "pass combo_fallback='cell-mean' to use the cell mean for unseen parts")
        total = np.zeros(len(self.s["genes"]))
        for d in found.values():
            total += self._base(context) if d is None else d
        return total


MODELS: dict[str, type[MeanShift]] = {
    cls.kind: cls for cls in (ControlMean, CellMean, CrisprMean, ContextTransfer, Linear, Ridge, Knn, Additive)
}
"""kind -> class; `biojepac predict --model KIND` fits one of these."""


def load(dpath: pathlib.Path, meta: dict) -> MeanShift:
    """Rebuild a saved baseline from its folder and `model.json` (`meta`, read by `registry.load`)."""
    dpath = pathlib.Path(dpath)
    model = MODELS[meta["kind"]](BaselineConfig(**meta["config"]))
    with np.load(dpath / "state.npz", allow_pickle=False) as npz:
        model.s = {k: npz[k] for k in npz.files}
    if (dpath / "features.npz").exists():
        model.features = GeneTable.load(dpath / "features.npz")
    return model
