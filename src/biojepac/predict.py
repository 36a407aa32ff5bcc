"""`biojepac predict`: turn a model into an `.h5ad` of predicted cells for one context.

Each predicted cell is a real control cell of the context (sampled with the seed, with replacement only
when a perturbation asks for more cells than there are controls) passed through `model.predict`, so
cell-to-cell variance and DE tests behave like real data. The real controls of the context follow the
predicted cells, as the VCC expects. Provenance (model, split, features, seed, command) goes in
`uns["biojepac"]`; the file is written atomically.

`--model` is either a baseline kind (fitted here on the training cells of `--split`) or a saved model
folder, rebuilt by `models.registry.load` from its `model.json` kind.
"""

import dataclasses
import inspect
import json
import pathlib
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.data.load import read_training_screen
from biojepac.errors import InputError
from biojepac.features import DEFAULT_FEATURES
from biojepac.io import command_line, write_h5ad_atomic
from biojepac.models import registry
from biojepac.models.saved import check_genes, read_meta

MAX_CELLS = 2_000_000
"""Most predicted cells one request may ask for (each holds every gene in memory while predicted)."""


@dataclasses.dataclass(frozen=True)
class PredictCommand:
    model: str
    """A baseline kind (control-mean, cell-mean, crispr-mean, context-transfer, linear, ridge, knn, additive) or a saved model directory."""
    screen: pathlib.Path
    """Training screen (.h5ad, canonical schema): the source of the real controls, and the fit data for a baseline kind."""
    context: str
    """Context (cell line) to predict in; its real controls are the starting cells."""
    out: pathlib.Path
    """Output .h5ad of predicted cells plus the context's real controls."""
    split: pathlib.Path | None = None
    """Split JSON; a baseline kind is fitted only on its train cells (plus all controls). None: all cells."""
    requests: pathlib.Path | None = None
    """Requested cells: CSV with columns target_gene,n_cells (e.g. VCC pert_counts_Validation.csv; other columns ignored)."""
    perturbations: tuple[str, ...] = ()
    """Perturbations to predict when no --requests file is given (each gets --n-cells cells)."""
    n_cells: int = 100
    """Cells per perturbation for --perturbations."""
    features: str = DEFAULT_FEATURES
    """Perturbation features for linear/ridge/knn (see biojepac.features.make_provider and docs/features.md):
    e.g. varm|expr|go (default: the gene embedding the screen ships in varm, else its expression embedding; GO where the
    target is not measured), expr|go, go, expr+go,
    screen:OTHER.h5ad, file:EMB.npz."""
    feature_fallback: Literal["error", "cell-mean"] = "error"
    """'error', or 'cell-mean' to predict the cell mean for perturbations without features (recorded)."""
    seed: int = 0
    """Seed for control sampling and for stochastic models."""
    max_controls: int = 0
    """Real controls written to the output (a seeded sample); 0 = all of the context's controls."""
    control_sampling: Literal["biojepac", "arc-state"] = "biojepac"
    """How each predicted cell's starting control is drawn: ours (seeded per perturbation), or as `state tx infer
    --tsv --seed SEED` draws them on this context's controls (state models only; reproduces STATE's output)."""
    counts_depth: int = 0
    """0: write log1p expression. N > 0: write raw counts, each cell (controls too) a multinomial draw of N UMIs
    from its expression profile expm1(x) (VCC 2026 takes raw counts; its cells have about 20,000)."""


def run_predict(cfg: PredictCommand) -> pathlib.Path:
    train = read_training_screen(cfg.screen)
    perts = read_requests(cfg)
    model, model_prov = get_model(cfg, train)
    out = predict_cells(model, train, perts, cfg.context, cfg.seed, cfg.max_controls, cfg.control_sampling)
    if cfg.counts_depth:
        out.X = sample_counts(out.X, cfg.counts_depth, cfg.seed)
    prov = {
        "model": model_prov,
        "train": str(cfg.screen),
        "split": _split_record(cfg.split),
        "features": _features_record(model),
        "context": cfg.context,
        "requests": str(cfg.requests) if cfg.requests else "perturbations",
        "seed": cfg.seed,
        "counts_depth": cfg.counts_depth,
        "command": command_line("biojepac predict", cfg),
    }
    # h5ad cannot store None; JSON-encode nested configs so every value survives the round trip.
    out.uns[schema.UNS_KEY] = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in prov.items() if v is not None}
    write_h5ad_atomic(out, cfg.out)
    n_pred = int((out.obs[schema.PERT_COL] != schema.CONTROL).sum())
    print(f"wrote {cfg.out}: {n_pred} predicted cells for {len(perts)} perturbations + "
          f"{out.n_obs - n_pred} real controls ({out.n_vars} genes)")
    return cfg.out


def read_requests(cfg: PredictCommand) -> pd.DataFrame:
    """target_gene, n_cells rows to predict (controls dropped: the real ones are always included)."""
    if cfg.requests is not None:
        if not cfg.requests.is_file():
            raise InputError(f"{cfg.requests}: file not found")
        try:
            df = pd.read_csv(cfg.requests, dtype={"target_gene": str}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise InputError(f"{cfg.requests}: not a readable CSV ({str(e).strip().splitlines()[0]})") from None
        missing = {"target_gene", "n_cells"} - set(df.columns)
        if missing:
            raise InputError(f"{cfg.requests}: missing column(s) {sorted(missing)}; expected target_gene,n_cells")
        if df.empty:
            raise InputError(f"{cfg.requests}: no rows under the header; list one perturbation per row")
        df = df[["target_gene", "n_cells"]]
        blank = [i + 2 for i, g in enumerate(df["target_gene"].str.strip()) if g == ""]  # +2: header, 1-based
        if blank:
            raise InputError(f"{cfg.requests}: column 'target_gene' is blank on line(s) {blank[:5]}")
        n = pd.to_numeric(df["n_cells"], errors="coerce")
        bad = [f"{g}={v}" for g, v, ok in zip(df["target_gene"], df["n_cells"], (n > 0) & (n == n.round())) if not ok]
        if bad:
            raise InputError(f"{cfg.requests}: column 'n_cells' must be a positive whole number; bad rows: {bad[:5]}")
        df = df.assign(n_cells=n)
    elif cfg.perturbations:
        df = pd.DataFrame({"target_gene": list(cfg.perturbations), "n_cells": cfg.n_cells})
    else:
        raise InputError("give --requests FILE.csv or --perturbations A B ...")
    dup = df["target_gene"][df["target_gene"].duplicated()].tolist()
    if dup:
        raise InputError(f"{cfg.requests or '--perturbations'}: perturbation listed twice: {dup[:5]}")
    df = df[df["target_gene"] != schema.CONTROL].reset_index(drop=True)
    where = cfg.requests or "--perturbations"
    if df.empty:
        raise InputError(f"{where}: only {schema.CONTROL!r} is listed; the real controls are always written, "
                         "so list the perturbations to predict")
    if df["n_cells"].sum() > MAX_CELLS:
        top = df.loc[df["n_cells"].idxmax()]
        raise InputError(f"{where}: {int(df['n_cells'].sum()):,} cells requested in all (column 'n_cells', e.g. "
                         f"{top['target_gene']}={int(top['n_cells']):,}), more than {MAX_CELLS:,}; the VCC asks for at most 200,000")
    return df.astype({"n_cells": int})


def get_model(cfg: PredictCommand, train: ad.AnnData):
    """(fitted model, provenance dict): a saved folder is loaded, a baseline kind is fitted here."""
    path = pathlib.Path(cfg.model)
    if path.is_dir():
        model = registry.load(path)
        check_genes(read_meta(path)["genes"], train.var_names, path, str(cfg.screen))
        return model, {"path": str(path), "kind": model.name}
    if cfg.model in registry.NEURAL:
        raise InputError(f"--model {cfg.model}: train it first (`biojepac train {cfg.model.split('-')[0]}`) and "
                         "pass the saved model folder it prints")
    if cfg.model not in registry.baseline_kinds():
        raise InputError(f"--model {cfg.model!r}: not a saved model folder nor a baseline kind {sorted(registry.baseline_kinds())}")
    from biojepac.data.splits import training_part

    fit_cells = training_part(train, cfg.split, cfg.screen)
    model, prov = registry.build(cfg.model, features=cfg.features, fallback=cfg.feature_fallback, seed=cfg.seed)
    model.fit(fit_cells)
    return model, {**prov, "fit_cells": int(fit_cells.n_obs)}


CONTROL_STREAM = 2**40
"""The random stream that picks the `max_controls` real controls kept (perturbation i draws from [seed, i])."""


def predict_cells(model, train: ad.AnnData, perts: pd.DataFrame, context: str, seed: int,
                  max_controls: int = 0, control_sampling: str = "biojepac") -> ad.AnnData:
    """Predicted cells (n_cells per perturbation, each from a sampled real control) + the real controls.

    A model whose `predict` takes `batches` (the state model's batch token) gets each control's batch label."""
    obs = train.obs
    ctrl_idx = np.flatnonzero((obs[schema.PERT_COL] == schema.CONTROL).to_numpy() &
                              (obs[schema.CONTEXT_COL] == context).to_numpy())
    if len(ctrl_idx) == 0:
        raise InputError(f"{schema.source_name(train)}: no "
                         f"{schema.CONTROL!r} cells in context {context!r} (column {schema.CONTEXT_COL!r})")
    x_ctrl = train.X[ctrl_idx]
    batch_ctrl = obs[schema.BATCH_COL].astype(str).to_numpy()[ctrl_idx]
    takes_batches = "batches" in inspect.signature(model.predict).parameters
    blocks, rows = [], []
    if control_sampling == "arc-state":
        from biojepac.models.state.arc_sampling import arc_state_cells

        x_dense = np.asarray(x_ctrl.toarray() if sp.issparse(x_ctrl) else x_ctrl, np.float32)
        preds, picks = arc_state_cells(model, x_dense, batch_ctrl, perts, context, seed, schema.CONTROL)
    else:
        preds, picks = [], []
        for i, (pert, n) in enumerate(zip(perts["target_gene"], perts["n_cells"])):
            rng = np.random.default_rng([seed, i])  # per-perturbation stream: adding one does not reshuffle others
            pick = rng.choice(len(ctrl_idx), size=n, replace=n > len(ctrl_idx))
            x = x_ctrl[pick]
            x = np.asarray(x.toarray() if sp.issparse(x) else x, np.float32)
            extra = {"batches": batch_ctrl[pick]} if takes_batches else {}
            preds.append(model.predict(x, pert, context, seed + i, **extra))
            picks.append(pick)
    for pert, y, pick in zip(perts["target_gene"], preds, picks):
        if y.shape != (len(pick), train.n_vars) or not np.all(np.isfinite(y)):
            raise InputError(f"model {getattr(model, 'name', model)!r} returned {y.shape} with non-finite values for "
                             f"{pert!r} in {context!r} (expected finite {(len(pick), train.n_vars)})")
        blocks.append(sp.csr_matrix(y))
        rows.append(pd.DataFrame({schema.PERT_COL: pert, "control_cell": obs.index[ctrl_idx[pick]]}))
    if max_controls and max_controls < len(ctrl_idx):
        # Its own stream (seed entries must be >= 0): no perturbation index reaches CONTROL_STREAM.
        keep = np.sort(np.random.default_rng([seed, CONTROL_STREAM]).choice(len(ctrl_idx), max_controls, replace=False))
    else:
        keep = np.arange(len(ctrl_idx))
    blocks.append(sp.csr_matrix(x_ctrl[keep], dtype=np.float32))
    rows.append(pd.DataFrame({schema.PERT_COL: schema.CONTROL, "control_cell": obs.index[ctrl_idx[keep]]}))
    new_obs = pd.concat(rows, ignore_index=True)
    new_obs[schema.CONTEXT_COL] = context
    new_obs[schema.BATCH_COL] = obs[schema.BATCH_COL].astype(str).loc[new_obs["control_cell"]].to_numpy()
    new_obs.index = [f"pred{i}" for i in range(len(new_obs))]
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        new_obs[col] = new_obs[col].astype("category")
    return ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=new_obs, var=pd.DataFrame(index=train.var_names.copy()))


def sample_counts(x: sp.csr_matrix, depth: int, seed: int, block_rows: int = 1024) -> sp.csr_matrix:
    """Raw counts: each row a multinomial draw of `depth` UMIs with probabilities expm1(row) / sum (log1p rows,
    any normalisation); an all-zero row stays zero. Seeded per block of rows."""
    if not 0 < depth <= 1_000_000:
        raise InputError(f"--counts-depth {depth}: must be between 1 and 1,000,000 UMIs per cell")
    x = sp.csr_matrix(x)
    blocks = []
    for k, lo in enumerate(range(0, x.shape[0], block_rows)):
        p = np.expm1(x[lo:lo + block_rows].toarray().astype(np.float64))
        tot = p.sum(axis=1, keepdims=True)
        p = np.divide(p, tot, out=np.zeros_like(p), where=tot > 0)
        c = np.random.default_rng([seed, 2**31, k]).multinomial(depth, p)
        c[tot[:, 0] <= 0] = 0
        blocks.append(sp.csr_matrix(c.astype(np.float32)))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(x.shape, dtype=np.float32)


def _split_record(split_fpath) -> dict | None:
    if split_fpath is None:
        return None
    return {"path": str(split_fpath), "content": json.loads(pathlib.Path(split_fpath).read_text())}



def _features_record(model) -> dict | None:
    feats = getattr(model, "features", None)
    return feats.describe() if hasattr(feats, "describe") else None
