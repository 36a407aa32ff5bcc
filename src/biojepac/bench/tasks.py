"""The benchmark tasks: a log1p screen, a split over it, and the perturbation features models may use.

| task                    | data                                   | split                                  |
|-------------------------|----------------------------------------|----------------------------------------|
| synthetic-unseen-pert   | synthetic `demo`-sized screen          | perturbations held out in every context |
| synthetic-fewshot-ctx   | the same screen                        | k perturbations of ctx2 seen, rest test |
| norman-unseen-single    | Norman19 (K562, CRISPRa) singles only  | held-out single genes                   |
| norman-combos           | Norman19, singles and doubles          | every double held out, singles train    |
| mcfaline-heldout-line   | McFaline23 (3 glioblastoma lines)      | U87MG held out entirely (zero-shot)     |
| cross-dataset-fewshot   | Norman19 K562 singles + McFaline23, `data combine`d | K562, A172, T98G train; 3 U87MG perts seen, 6 test |

Our models run with their default features (`features.DEFAULT_FEATURES`, built on the training cells).
`Task.features` is the table the external peers read from the task folder: synthetic genes have no GO
annotation, so there it is the screen's own noisy network features (`varm["network_features"]`); real
tasks give GO (TF-IDF + SVD) features.
A *task folder* is what external peers (STATE, GEARS) read: train.h5ad (train + val items and all
controls, obs `split`), requests.csv (the test items and their cell counts) and features.npz.
"""

import dataclasses
import hashlib
import pathlib
import typing

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.io import atomic_write

TaskName = typing.Literal["synthetic-unseen-pert", "synthetic-fewshot-ctx", "norman-unseen-single",
                          "norman-combos", "mcfaline-heldout-line", "cross-dataset-fewshot"]
TASKS: tuple[str, ...] = typing.get_args(TaskName)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    adata: ad.AnnData
    """The whole log1p screen (train, val and test cells, all controls)."""
    split: object
    """A `biojepac.data.splits.Split`."""
    features: object
    """A `biojepac.features.base.GeneTable` covering train and test perturbations."""
    checksum: str
    """sha256 of X and the canonical obs columns, so a result names the exact data it came from."""
    has_go: bool
    """Whether genes are real symbols with GO annotations (GEARS needs them)."""


def get_task(name: str, data_dpath: pathlib.Path, seed: int = 0, cache_dpath: pathlib.Path | None = None) -> Task:
    from biojepac.data import splits

    if name.startswith("synthetic"):
        adata = make_synthetic(seed)
        features = synthetic_features(adata)
        if name == "synthetic-unseen-pert":
            split = splits.make_unseen_perturbation_split(adata, seed=seed)
        else:
            split = splits.make_fewshot_context_split(adata, "ctx2", k=10, seed=seed)
        return Task(name, adata, split, features, checksum(adata), has_go=False)
    from biojepac.data.recipes import load_norman_mcfaline

    full = load_norman_mcfaline(pathlib.Path(data_dpath) / "norman19_mcfaline23_devel.h5ad")
    go = get_go_table(cache_dpath)
    if name == "norman-unseen-single":
        keep = (full.obs["dataset"] == "norman19").to_numpy() & ~full.obs[schema.PERT_COL].str.contains(r"\+").to_numpy()
        adata = full[keep].copy()
        split = splits.make_unseen_perturbation_split(adata, fractions=(0.6, 0.1, 0.3), seed=seed)
    elif name == "norman-combos":
        # GEARS' combination split with every gene in train and every double held out (`combo_seen2`
        # when both singles were measured): the additive question, how well singles predict doubles.
        adata = full[(full.obs["dataset"] == "norman19").to_numpy()].copy()
        split = splits.make_combination_split(adata, seed=seed, gene_fractions=(1.0, 0.0, 0.0), seen2_test_fraction=1.0)
    elif name == "mcfaline-heldout-line":
        adata = full[(full.obs["dataset"] == "mcfaline23").to_numpy()].copy()
        split = splits.make_zeroshot_context_split(adata, "U87MG", val_fraction=0.1, seed=seed)
    elif name == "cross-dataset-fewshot":
        # Two screens combined as a user would (`data combine`): contexts `dataset:cell_line`; few-shot
        # transfer into a third glioblastoma line from K562 (another dataset, CRISPRa) and two lines.
        adata = combine_norman_mcfaline(full, cache_dpath)
        split = splits.make_fewshot_context_split(adata, "mcfaline23:U87MG", k=3, val_fraction=0.0, seed=seed)
    else:
        raise ValueError(f"unknown task {name!r}; known: {TASKS}")
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        adata.obs[col] = adata.obs[col].astype(str)
    return Task(name, adata, split, go.with_options(fallback="zeros"), checksum(adata), has_go=True)


def combine_norman_mcfaline(full: ad.AnnData, cache_dpath: pathlib.Path | None) -> ad.AnnData:
    """The fixture's Norman19 singles and McFaline23 written as two screens and combined by `data.combine`
    (both log1p of a 1e4 total, kept as they are; genes matched through the packaged symbol table)."""
    import tempfile

    from biojepac.data.combine import CombineConfig, combine_screens

    dpath = pathlib.Path(cache_dpath) / "cross_dataset" if cache_dpath is not None else pathlib.Path(tempfile.mkdtemp())
    dpath.mkdir(parents=True, exist_ok=True)
    is_norman = (full.obs["dataset"] == "norman19").to_numpy()
    parts = {"norman19": is_norman & ~full.obs[schema.PERT_COL].str.contains(r"\+").to_numpy(), "mcfaline23": ~is_norman}
    screens = []
    for name, keep in parts.items():
        part = full[keep].copy()
        part.uns = {}
        atomic_write(dpath / f"{name}.h5ad", part.write_h5ad)
        screens.append(f"{name}={dpath / name}.h5ad")
    out = dpath / "combined.h5ad"
    combine_screens(CombineConfig(screens=tuple(screens), out=out, log1p_targets=("norman19=1e4", "mcfaline23=1e4"),
                                  checksum=False))
    return ad.read_h5ad(out)


def get_go_table(cache_dpath: pathlib.Path | None):
    """GO TF-IDF + SVD features; built once (about 20 s) and kept in the bench cache."""
    from biojepac.features import make_provider
    from biojepac.features.base import GeneTable

    fpath = None if cache_dpath is None else pathlib.Path(cache_dpath) / "go_features.npz"
    if fpath is not None and fpath.exists():
        return GeneTable.load(fpath)
    go = make_provider("go")
    if fpath is not None:
        atomic_write(fpath, go.save)
    return go


def make_synthetic(seed: int) -> ad.AnnData:
    """A `demo`-sized synthetic screen with 40 perturbations, normalised (1e4) and log1p."""
    from biojepac.data.normalize import normalize_log1p
    from biojepac.data.synthetic import get_screen_preset, make_synthetic_screen

    adata = make_synthetic_screen(get_screen_preset("demo", n_genes=300, n_perts=40, cells_per_pert=40), seed=seed)
    adata = normalize_log1p(adata, target=1e4)
    for col in (schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL):
        adata.obs[col] = adata.obs[col].astype(str)
    return adata


def synthetic_features(adata: ad.AnnData):
    from biojepac.features.base import GeneTable

    return GeneTable(name="synthetic-network-features", keys=tuple(map(str, adata.var_names)),
                     matrix=np.asarray(adata.varm["network_features"], np.float32), source="varm['network_features']")


def checksum(adata: ad.AnnData) -> str:
    h = hashlib.sha256()
    x = adata.X
    if sp.issparse(x):
        for part in (x.indptr, x.indices, x.data):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(x).tobytes())
    cols = [schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL]
    h.update(pd.util.hash_pandas_object(adata.obs[cols].astype(str), index=False).to_numpy().tobytes())
    h.update("\n".join(map(str, adata.var_names)).encode())
    return h.hexdigest()[:16]


def fold_masks(task: Task) -> dict[str, np.ndarray]:
    from biojepac.data.splits import split_masks

    return split_masks(task.adata, task.split)


def requests(task: Task) -> pd.DataFrame:
    """context, target_gene, n_cells for every test item (n_cells = the real cell count)."""
    obs = task.adata.obs
    test = set(map(tuple, task.split.test))
    counts = obs.groupby([schema.CONTEXT_COL, schema.PERT_COL], observed=True).size()
    rows = [(c, p, int(counts[(c, p)])) for c, p in sorted(test)]
    return pd.DataFrame(rows, columns=["context", "target_gene", "n_cells"])


def write_task(task: Task, dpath: pathlib.Path) -> pathlib.Path:
    """The task folder external peers read (see the module docstring)."""
    dpath = pathlib.Path(dpath)
    dpath.mkdir(parents=True, exist_ok=True)
    masks = fold_masks(task)
    is_ctrl = (task.adata.obs[schema.PERT_COL] == schema.CONTROL).to_numpy()
    keep = masks["train"] | masks["val"]
    train = task.adata[keep].copy()
    train.obs = train.obs[[schema.PERT_COL, schema.CONTEXT_COL, schema.BATCH_COL]].copy()
    train.obs["split"] = np.where(is_ctrl[keep], "control", np.where(masks["val"][keep], "val", "train"))
    train.X = sp.csr_matrix(train.X, dtype=np.float32)
    train.uns = {}
    atomic_write(dpath / "train.h5ad", train.write_h5ad)
    atomic_write(dpath / "requests.csv", lambda f: requests(task).to_csv(f, index=False))
    atomic_write(dpath / "features.npz", task.features.save)
    return dpath


