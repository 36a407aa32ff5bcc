"""Perturbation features: label -> vector providers (see `base.FeatureProvider` and docs/features.md).

`make_provider(spec, train)` turns a short spec string into a provider, so a model or CLI flag can
name its features in one word:

| spec                    | provider                                                       |
|-------------------------|----------------------------------------------------------------|
| `onehot`                | one-hot over the training perturbations (no generalisation)    |
| `go` / `go:PATH`        | GO TF-IDF + SVD from the shared TSV or a GAF 2.2 file          |
| `expr`                  | PCA gene loadings of the training cells                        |
| `file:PATH`             | precomputed `.pt` / `.npz` / `.parquet` / `.csv`               |
| `esm:WEIGHTS:FASTA`     | ESM-2 (fair-esm) from local weights                            |
| `guides:PATH`           | guide k-mer counts averaged per target gene                    |
| `varm:KEY`              | per-gene vectors stored in the training data's `varm[KEY]`     |
"""

import pathlib

import anndata as ad

from biojepac.data.schema import PERT_COL
from biojepac.errors import InputError
from biojepac.features.base import FeatureProvider, GeneTable

SHARED_GO_FPATH = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "data" / "human_gene_go.tsv.gz"
"""`../shared/data/human_gene_go.tsv.gz` beside the repository (the default GO source)."""


def _onehot(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.onehot import make_onehot_provider, make_vocabulary

    if train is None:
        raise InputError("feature spec 'onehot' needs the training data")
    return make_onehot_provider(make_vocabulary(train.obs[PERT_COL].astype(str).unique()))


def _go(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.go import GoConfig, make_go_provider

    return make_go_provider(GoConfig(annotations_fpath=pathlib.Path(arg) if arg else SHARED_GO_FPATH))


def _expr(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.expression import ExpressionConfig, make_expression_provider

    if train is None:
        raise InputError("feature spec 'expr' needs the training data")
    return make_expression_provider(train, ExpressionConfig(dim=int(arg) if arg else 32))


def _file(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.files import load_embedding_file

    return load_embedding_file(pathlib.Path(arg))


def _esm(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.esm import EsmConfig, make_esm_provider

    weights, _, fasta = arg.partition(":")
    return make_esm_provider(EsmConfig(weights_fpath=pathlib.Path(weights), fasta_fpath=pathlib.Path(fasta)))


def _guides(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.guides import make_guide_provider

    return make_guide_provider(pathlib.Path(arg), by_target=True)


def _varm(arg: str, train: ad.AnnData | None) -> GeneTable:
    key = arg or "network_features"
    if train is None or key not in train.varm:
        raise InputError(f"feature spec 'varm:{key}' needs training data with varm[{key!r}] (e.g. a synthetic screen)")
    return GeneTable(name=f"varm:{key}", keys=tuple(map(str, train.var_names)), matrix=train.varm[key],
                     source=f"varm[{key!r}] of the training data")


BUILDERS = {"onehot": _onehot, "go": _go, "expr": _expr, "file": _file, "esm": _esm, "guides": _guides, "varm": _varm}
"""Spec prefix -> builder(argument, training AnnData or None)."""


def make_provider(spec: str, train: ad.AnnData | None = None) -> GeneTable:
    kind, _, arg = spec.partition(":")
    if kind not in BUILDERS:
        raise InputError(f"unknown feature spec {spec!r}; expected one of {sorted(BUILDERS)} (e.g. 'go', 'file:emb.npz')")
    return BUILDERS[kind](arg, train)


def resolve_features(features, train: ad.AnnData, default: str | None = None) -> GeneTable | None:
    """What a model's `features` argument may be, as a provider: a spec string (built on `train`), a
    provider (kept), a dict gene -> vector, or None (the `default` spec; None stays None)."""
    import numpy as np

    if features is None:
        return None if default is None else make_provider(default, train)
    if isinstance(features, str):
        return make_provider(features, train)
    if isinstance(features, dict):
        keys = tuple(features)
        return GeneTable(name=f"dict{len(keys)}", keys=keys, matrix=np.stack([np.asarray(features[k]) for k in keys]),
                         source="in-memory dict")
    return features


__all__ = ["FeatureProvider", "GeneTable", "make_provider", "resolve_features"]
