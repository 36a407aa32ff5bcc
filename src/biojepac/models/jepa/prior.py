"""The closed-form prior of BioJEPAC's predict stage (and of the state model): each perturbation's mean shift.

With Δ(p, c) the mean log-expression of p's cells in context c minus that of c's controls (the pseudobulk
delta), fitted on the training perturbations (BioJEPAC lifts it to the latent its decoder reads out as
exactly that delta, `trainer.lift_to_latent`):

    prior(p, c) = Δ(p, c)            when p was measured in c (a training perturbation)
                = Σ prior(pᵢ, c)     for an unmeasured combination p = p₁+p₂ (the additive model)
                = T(p, c)            when p was measured in another context (context transfer)
                = base_c + B·φ(p)    otherwise (ridge from the perturbation features φ)

`base_c` is the mean shift of c's training perturbed cells (each group weighted by its cells; of all of
them for a context not in training): the cell-mean baseline. `T` moves p's measured shifts from the
other contexts, each rescaled by how strongly the two contexts respond (the norm ratio of their shifts
over the perturbations both measured), as the context-transfer baseline does in expression.
B is ridge regression on centred features with λ chosen over a grid by exact leave-one-out (the
hat-matrix shortcut, with the leverage of the context mean shift counted), so nothing is tuned by hand:
λ is the one whose leave-one-out predictions correlate best with each training perturbation's measured
shift (relative to its context's mean). The squared error, the other choice, favours strong shrinkage
toward the mean shift when perturbations are noisy, and shrunk predictions lose the contrast between
perturbations that the VCC metrics score. When no λ predicts the held-out rows clearly better (squared
error, by more than one standard error at the best λ) than the context's mean shift, B = 0:
the features carry no signal the data can show, and the prior is the cell-mean baseline for unseen
perturbations (Norman's GO-featured singles and the unmeasured parts of its combinations). On the demo's
screens of seeds 0 to 7 the prior alone scored above the linear baseline on 7 of 8; on seed 2 no λ passed
the check (linear 28.2, the prior 0.5).

Whether a perturbation's response carries from one context to another is decided from the data too:
each training group that was also measured in another context is predicted both ways, by transfer from
the other contexts and by its context's mean shift (its own group left out of both), and the prior
transfers only where transfer had the smaller squared error (one decision for contexts seen in training,
one for new contexts). Where cell lines respond alike it transfers (the context-transfer baseline);
where they do not, it predicts the context's mean shift (the cell-mean baseline). The least-squares
weight between the two is not used: shrinking toward the mean lowers squared error but also the
contrast between perturbations that the VCC metrics score (on synthetic-fewshot-ctx, α = 0.58 scored
26.5 where α = 1 scores 37.9).
The action-conditioned predictor learns a residual on top of this prior.
"""

import dataclasses
import warnings

import numpy as np

from biojepac.data.pairing import pseudobulk
from biojepac.data.schema import CONTEXT_COL, CONTROL, PERT_COL, split_combo
from biojepac.errors import InputError
from biojepac.features.base import GeneTable

LAMBDA_GRID = np.logspace(-3, 3, 13)
"""λ candidates, as multiples of the mean squared feature norm."""


@dataclasses.dataclass
class Prior:
    labels: np.ndarray
    """Perturbation label of each measured (perturbation, context) group."""
    group_ctx: np.ndarray
    """Context index of each group."""
    contexts: np.ndarray
    """Training context names (sorted)."""
    delta: np.ndarray
    """(groups, D) measured mean latent shifts."""
    base: np.ndarray
    """(contexts, D) mean shift of each context's perturbations."""
    scale_cc: np.ndarray
    """(contexts, contexts) context transfer scale c <- c': |Δ_c| / |Δ_c'| over the perturbations both
    measured (1 when they share none), as the context-transfer baseline."""
    coef: np.ndarray
    """(features, D) ridge coefficients B."""
    feat_mean: np.ndarray
    """(features,) mean feature vector of the training groups (φ is centred with it)."""
    ridge_lambda: float
    alpha_seen: float = 1.0
    """1: transfer into a context measured in training; 0: use its mean shift (see the module docstring)."""
    alpha_unseen: float = 1.0
    """The same for a context not in training."""
    max_norm: float = np.inf
    """Largest norm of a training group's shift beyond its context's mean: a ridge prediction is scaled down
    to it, since a linear map extrapolated far past every effect it saw is not evidence of a larger one."""

    def is_measured(self, label: str, context: str) -> bool:
        """Whether `label` was measured in `context` (its prior is then the measurement itself)."""
        return bool(((self.labels == label) & (self.contexts[self.group_ctx] == context)).any())

    def shift(self, labels: list[str], context: str, features: GeneTable) -> np.ndarray:
        """(len(labels), D) prior mean latent shift of each label in `context`."""
        hits = np.flatnonzero(self.contexts == context)
        c = int(hits[0]) if len(hits) else -1
        base = self.base[c] if c >= 0 else self.base.mean(0)
        out = np.empty((len(labels), self.delta.shape[1]), np.float32)
        need_ridge = []
        for i, label in enumerate(labels):
            if label == CONTROL:
                out[i] = 0.0
                continue
            same = np.flatnonzero((self.labels == label) & (self.group_ctx == c))
            parts = [p for p in split_combo(label) if p != CONTROL]
            if len(same):  # measured here: the measurement is the best estimate of its mean shift
                out[i] = self.delta[same[0]]
            elif len(parts) > 1:  # an unmeasured combination: the sum of its singles' priors (additive)
                out[i] = self.shift(parts, context, features).sum(0)
            elif (moved := self.transfer(label, c)) is not None:
                out[i] = moved
            else:
                need_ridge.append(i)
        lacking = [i for i in need_ridge if features.missing([labels[i]])]
        if lacking:  # nothing known about these: the context's typical shift, as the cell-mean baseline
            warnings.warn(f"biojepac: no {features.name!r} features for {[labels[i] for i in lacking][:10]}; "
                          "predicting the context's mean perturbation shift for them")
            out[lacking] = base
            need_ridge = [i for i in need_ridge if i not in lacking]
        if need_ridge:
            phi = features.vectors([labels[i] for i in need_ridge]).astype(np.float64) - self.feat_mean
            ridge = phi @ self.coef
            norm = np.linalg.norm(ridge, axis=1, keepdims=True)
            out[need_ridge] = base + ridge * np.minimum(1.0, self.max_norm / np.maximum(norm, 1e-12))
        return out

    def transfer(self, label: str, c: int) -> np.ndarray | None:
        """p's shifts measured in contexts other than `c` (-1: a new context), each rescaled to c by how
        strongly the two contexts respond (`scale_cc`), averaged (or c's mean shift where transfer lost on
        the training contexts, α = 0); None when p was measured nowhere else."""
        other = (self.labels == label) & (self.group_ctx != c)
        if not other.any():
            return None
        src = self.group_ctx[other]
        scale = self.scale_cc[c, src] if c >= 0 else np.ones(len(src))
        moved = (self.delta[other] * scale[:, None]).mean(0)
        base, alpha = (self.base[c], self.alpha_seen) if c >= 0 else (self.base.mean(0), self.alpha_unseen)
        return base + alpha * (moved - base)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Prior":
        kw = {f.name: arrays.get(f.name) for f in dataclasses.fields(cls)}  # older saves lack the alphas and max_norm
        kw = {k: v for k, v in kw.items() if v is not None}
        kw["ridge_lambda"] = float(kw["ridge_lambda"])
        for name in ("alpha_seen", "alpha_unseen", "max_norm"):
            kw[name] = float(kw[name])
        return cls(**kw)


def fit_prior(labels: np.ndarray, group_ctx: np.ndarray, contexts: np.ndarray, delta: np.ndarray,
              features: GeneTable, select_transfer: bool = True,
              lambda_by: str = "correlation", n_cells: np.ndarray | None = None) -> tuple[Prior, np.ndarray]:
    """Fit the prior on measured groups (`labels[i]` in context `group_ctx[i]` has shift `delta[i]`).

    Also returns each group's out-of-sample prior shift (its ridge part left out of the fit, its
    transfer part from the other contexts): the prior errors the residual predictor learns to correct.
    Groups whose perturbation has no feature vector still count for the context mean shifts, the
    measured lookups, combinations and transfer; only the ridge is fitted without them.
    `n_cells`: each group's cell count, which weights the context mean shifts (default: equal weights).
    `lambda_by`: "correlation" (default) or "mse" (see `ridge_loo`); `select_transfer=False` always
    transfers (α = 1)."""
    labels, group_ctx, delta = np.asarray(labels, str), np.asarray(group_ctx), np.asarray(delta, np.float64)
    n_ctx = len(contexts)
    w = np.ones(len(labels)) if n_cells is None else np.asarray(n_cells, np.float64)
    mean_of = lambda rows: (w[rows, None] * delta[rows]).sum(0) / w[rows].sum()
    base = np.stack([mean_of(group_ctx == c) if (group_ctx == c).any() else mean_of(slice(None)) for c in range(n_ctx)])
    resid = delta - base[group_ctx]
    scale_cc = np.ones((n_ctx, n_ctx))
    for a in range(n_ctx):
        for b in range(n_ctx):
            shared = np.intersect1d(labels[group_ctx == a], labels[group_ctx == b])
            if a != b and len(shared):
                rows = lambda c: [int(np.flatnonzero((labels == lab) & (group_ctx == c))[0]) for lab in shared]
                scale_cc[a, b] = np.sqrt((delta[rows(a)] ** 2).sum() / max((delta[rows(b)] ** 2).sum(), 1e-12))
    # Every measured group counts for the mean shifts, lookups and transfer; the ridge needs features.
    missing = set(features.missing(labels))
    has = np.asarray([not set(split_combo(lab)) & missing for lab in labels], bool)
    if has.sum() < 2:
        raise InputError(f"prior: only {int(has.sum())} training perturbations have {features.name!r} features; "
                         "at least 2 are needed to fit the map from features to shifts")
    phi = features.vectors(list(labels[has])).astype(np.float64)
    feat_mean = phi.mean(0)
    w_ctx = np.bincount(group_ctx, w, minlength=n_ctx)
    coef, lam, loo_has = ridge_loo(phi - feat_mean, resid[has], lambda_by, base_leverage=(w / w_ctx[group_ctx])[has])
    loo_fit = np.zeros_like(resid)
    loo_fit[has] = loo_has
    alphas = transfer_weights(labels, group_ctx, delta, base, scale_cc, w) if select_transfer else (1.0, 1.0)
    prior = Prior(np.asarray(labels, str), np.asarray(group_ctx), np.asarray(contexts, str), delta.astype(np.float32),
                  base.astype(np.float32), scale_cc.astype(np.float32), coef.astype(np.float32),
                  feat_mean.astype(np.float32), lam, *alphas, float(np.linalg.norm(resid, axis=1).max()))
    out_of_sample = base[group_ctx] + loo_fit
    for i in range(len(labels)):
        if (moved := prior.transfer(labels[i], group_ctx[i])) is not None:
            out_of_sample[i] = moved
    return prior, out_of_sample.astype(np.float32)


def fit_screen_prior(adata, contexts, features: GeneTable, **fit_kw) -> tuple[Prior, dict[tuple[str, int], np.ndarray]]:
    """`fit_prior` on a log1p training screen's pseudobulk deltas: every (perturbation, context) group in
    `contexts` (the model's context list) minus that context's controls, each weighted by its cells.

    Takes the whole training screen, the perturbations without features included (a model's network
    leaves those out). Returns the prior and each group's out-of-sample shift keyed by (label, context
    index), the target of the residual the model learns."""
    groups, means = pseudobulk(adata)
    pert = groups[PERT_COL].to_numpy(str)
    ctx = np.searchsorted(np.asarray(contexts, str), groups[CONTEXT_COL].to_numpy(str))
    ctrl = {int(c): r for r, (c, lab) in enumerate(zip(ctx, pert)) if lab == CONTROL}
    rows = np.flatnonzero((pert != CONTROL) & np.isin(ctx, list(ctrl)))
    delta = means[rows] - means[[ctrl[int(c)] for c in ctx[rows]]]
    prior, oos = fit_prior(pert[rows], ctx[rows], contexts, delta, features,
                           n_cells=groups["n_cells"].to_numpy()[rows], **fit_kw)
    return prior, {(str(lab), int(c)): oos[i] for i, (lab, c) in enumerate(zip(pert[rows], ctx[rows]))}


def transfer_weights(labels, group_ctx, delta, base, scale_cc, w) -> tuple[float, float]:
    """(α for contexts seen in training, α for new contexts), each 1 (transfer) or 0 (the context's mean
    shift): whichever predicts the training groups also measured in another context with the smaller
    squared error, each group left out of both sides (1 when there is nothing to decide on).

    With t the transferred and y the measured shift, both relative to the mean shift b, transfer wins
    when Σ|y − t|² < Σ|y|², i.e. when the least-squares weight Σ<y, t> / Σ|t|² exceeds 1/2."""
    sums = np.zeros((2, 2))  # rows: seen, unseen; columns: <y - b, t - b>, |t - b|²
    w_in = np.bincount(group_ctx, w, minlength=len(base))
    total = (w_in[:, None] * base).sum(0)  # every group's cell-weighted shift, summed
    for i in range(len(labels)):
        c = group_ctx[i]
        other = (labels == labels[i]) & (group_ctx != c)
        if not other.any():
            continue
        src = group_ctx[other]
        base_seen = (base[c] * w_in[c] - w[i] * delta[i]) / max(w_in[c] - w[i], 1e-12)  # c's mean shift without i
        base_rest = (total - w_in[c] * base[c]) / max(w_in.sum() - w_in[c], 1e-12)  # the other contexts' mean shift
        cases = ((delta[other] * scale_cc[c, src][:, None]).mean(0), base_seen), (delta[other].mean(0), base_rest)
        for row, (moved, b) in enumerate(cases):
            y, t = delta[i] - b, moved - b
            sums[row] += (float(y @ t), float(t @ t))
    return tuple(float(num / den > 0.5) if den > 0 else 1.0 for num, den in sums)


def ridge_loo(x: np.ndarray, y: np.ndarray, criterion: str = "mse",
              base_leverage: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Ridge coefficients (x.T (x x.T + λI)^-1 y) with λ minimising the exact leave-one-out squared error
    (`criterion="mse"`) or maximising the mean leave-one-out Pearson r between each row's predicted and
    measured values (`"correlation"`), that λ (relative to the mean squared row norm of x; inf when no λ
    beats the base), and the leave-one-out fitted values.

    In the dual form the hat matrix is H = K (K + λI)^-1 with K = x x.T, and the leave-one-out residual
    of row i is (y_i − ŷ_i) / (1 − H_ii): one eigendecomposition of K serves every λ.
    `base_leverage`: when y is a shift minus a (weighted) mean that row i entered with weight h0_i and x is
    centred, H gains that mean's leverage h0_i. Without it, leave-one-out is not out of sample: rows that
    sum to zero let a near-interpolating fit "predict" each one from the others (on Norman's 10 GO-featured
    singles, r 1.00 at the smallest λ, −0.12 at best once counted), and the smallest λ always wins.
    Where even the λ with the smallest leave-one-out squared error is not below the base's (every row
    predicted by the mean shift, y_i / (1 − h0_i)) by more than one standard error of the per-row
    difference, the features show no out-of-sample signal and B = 0 (the one-standard-error rule, with the
    base as the simpler model). Otherwise λ is the criterion's choice."""
    n = len(x)
    h0 = np.zeros(n) if base_leverage is None else np.asarray(base_leverage, np.float64)
    k = x @ x.T
    scale = max(float(np.trace(k)) / max(n, 1), 1e-12)
    evals, evecs = np.linalg.eigh(k)
    uy = evecs.T @ y
    # A row alone in its context (h0 = 1) has no leave-one-out estimate: the mean shift is its own value.
    # It stays in the fit (with y = 0 it adds nothing) but out of every criterion, and is its own prediction.
    scored = h0 < 1.0 - 1e-9
    null_loo = np.where(scored[:, None], y / np.maximum(1.0 - h0, 1e-6)[:, None], 0.0)  # each row by the mean shift
    null_err = (null_loo**2).sum(1)[scored]
    best, best_gain = (np.inf, None, None), None
    for lam in LAMBDA_GRID * scale:
        shrink = evals / (evals + lam)
        fitted = evecs @ (shrink[:, None] * uy)
        h_diag = (evecs**2) @ shrink + h0
        loo = np.where(scored[:, None], (y - fitted) / np.maximum(1.0 - h_diag, 1e-6)[:, None], 0.0)
        gain = null_err - (loo[scored] ** 2).sum(1)  # per row: how much the ridge beat the mean shift out of sample
        if best_gain is None or gain.mean() > best_gain.mean():
            best_gain = gain  # at the λ with the smallest leave-one-out squared error
        if criterion == "mse":
            err = float((loo**2).sum())
        else:  # minus the mean leave-one-out Pearson r of each row's predicted and measured values
            err = -float(np.mean(_row_corr(y[scored], (y - loo)[scored]))) if scored.any() else 0.0
        if err < best[0]:
            best = (err, lam, y - loo)
    _, lam, loo_fit = best
    if not clearly_better(best_gain):
        return np.zeros((x.shape[1], y.shape[1])), np.inf, y - null_loo
    alpha = evecs @ (uy / (evals + lam)[:, None])
    return x.T @ alpha, float(lam / scale), loo_fit


def clearly_better(gain: np.ndarray) -> bool:
    """Whether per-row gains of a richer model over a simpler one (error of the simpler minus error of the
    richer, each row held out) average above one standard error: the one-standard-error rule, shared by
    the ridge against the mean shift and the learned residuals against the prior."""
    gain = np.asarray(gain, np.float64)
    return len(gain) > 1 and float(gain.mean()) > float(gain.std(ddof=1)) / np.sqrt(len(gain))


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of `a` with the same row of `b` (0 for a constant row)."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
