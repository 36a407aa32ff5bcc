"""Perturbation features: label -> vector providers (see `base.GeneTable` and docs/features.md).

`make_provider(spec, train)` turns a short spec string into a provider, so a model or CLI flag can
name its features in one word. Atomic specs:

| spec                    | provider                                                                  |
|-------------------------|---------------------------------------------------------------------------|
| `onehot`                | one-hot over the training perturbations (no generalisation)               |
| `go` / `go:PATH`        | GO TF-IDF + SVD from the packaged table, or a GAF 2.2 / TSV file          |
| `expr` / `expr:K`       | Ahlmann-Eltze's gene embedding: PCA of the training pseudobulk deltas (K=10) |
| `expr-cells` / `:K`     | PCA gene loadings of the training cells (K=32)                            |
| `screen:PATH`           | another screen's per-perturbation pseudobulk deltas, PCA (K=10)           |
| `file:PATH`             | precomputed `.pt` / `.npz` / `.parquet` / `.csv`                          |
| `esm:WEIGHTS:FASTA`     | ESM-2 (fair-esm) from local weights                                       |
| `guides:PATH`           | guide k-mer counts averaged per target gene                               |
| `varm:KEY` / `varm`     | per-gene vectors in the training data's `varm[KEY]`; bare: `VARM_KEYS`    |

Combined (`features.combine`): `A+B` concatenates (each part RMS-normalised, zeros plus an indicator
column where a part lacks the gene); `A|B` takes the first source that has the gene, later sources
mapped into the first one's coordinates. `+` binds tighter than `|`: `expr|go+screen:S.h5ad`. A bare
`varm` (the gene embedding a screen ships) is optional in a `|` chain: a screen without one skips it.
Every lookup harmonises gene symbols first (`base.GeneTable.match`).
"""

import pathlib

import anndata as ad

from biojepac.data.schema import PERT_COL
from biojepac.errors import InputError
from biojepac.features.base import FeatureProvider, GeneTable

DEFAULT_FEATURES = "varm|expr|go"
"""The default perturbation features of every model that needs them (linear, ridge, knn, state, biojepac),
built by `resolve_features` / `make_provider` on the training screen: the gene embedding the screen ships
in `varm` (`VARM_KEYS`) when it has one, else the screen's own expression embedding (`expr`) where the
target is a measured gene; then GO mapped into those coordinates for targets that are not measured genes.
A screen without a shipped embedding gets `expr|go`; one without GO symbols (synthetic) skips GO. Chosen on
benchmarks/results/features.md: the best spec or within its CI on every task."""

VARM_KEYS = ("gene_embedding", "network_features")
"""`varm` keys a bare `varm` spec reads, first present wins: where a user ships a gene embedding with
their screen (`gene_embedding`), or a synthetic screen its network features."""


class AbsentSource(InputError):
    """An optional source (bare `varm`) that the training screen does not ship; a `|` chain skips it."""


def _need_train(spec: str, train: ad.AnnData | None) -> ad.AnnData:
    if train is None:
        raise InputError(f"feature spec {spec!r} needs the training data")
    return train


def _onehot(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.onehot import make_onehot_provider, make_vocabulary

    train = _need_train("onehot", train)
    return make_onehot_provider(make_vocabulary(train.obs[PERT_COL].astype(str).unique()))


def _go(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.go import GoConfig, make_go_provider

    return make_go_provider(GoConfig(annotations_fpath=pathlib.Path(arg)) if arg else GoConfig())


def _dim(spec: str, arg: str, default: int) -> int:
    if not arg:
        return default
    if not arg.isdigit() or int(arg) < 1:
        raise InputError(f"feature spec {spec!r}: the number of components must be a positive integer, got {arg!r}")
    return int(arg)


def _expr(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.expression import make_pseudobulk_provider

    return make_pseudobulk_provider(_need_train("expr", train), dim=_dim(f"expr:{arg}", arg, 10))


def _expr_cells(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.expression import ExpressionConfig, make_expression_provider

    train = _need_train("expr-cells", train)
    return make_expression_provider(train, ExpressionConfig(dim=_dim(f"expr-cells:{arg}", arg, 32)))


def _screen(arg: str, train: ad.AnnData | None) -> GeneTable:
    from biojepac.features.screens import make_screen_provider

    if not arg:
        raise InputError("feature spec 'screen:PATH' needs the path of another screen (.h5ad)")
    if not pathlib.Path(arg).is_file():
        raise InputError(f"feature spec 'screen:{arg}': file not found")
    return make_screen_provider(pathlib.Path(arg), train)


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
    if not arg:
        key = next((k for k in VARM_KEYS if train is not None and k in train.varm), None)
        if key is None:
            raise AbsentSource(f"feature spec 'varm': the training screen ships no gene embedding "
                               f"(varm keys looked for: {', '.join(VARM_KEYS)})")
    else:
        key = arg
    if train is None or key not in train.varm:
        raise InputError(f"feature spec 'varm:{key}' needs training data with varm[{key!r}] (e.g. a synthetic screen)")
    return GeneTable(name=f"varm:{key}", keys=tuple(map(str, train.var_names)), matrix=train.varm[key],
                     source=f"varm[{key!r}] of the training data")


BUILDERS = {"onehot": _onehot, "go": _go, "expr": _expr, "expr-cells": _expr_cells, "screen": _screen,
            "file": _file, "esm": _esm, "guides": _guides, "varm": _varm}
"""Spec prefix -> builder(argument, training AnnData or None)."""


def parse_spec(spec: str) -> list[list[str]]:
    """`A+B|C` -> [["A", "B"], ["C"]]: alternatives (`|`) of concatenations (`+`) of atomic specs.

    A spec is split only when every piece starts with a known kind, so a path containing `+` or `|`
    in a single atomic spec (`file:a+b.npz`) still works."""
    alts = [[part.strip() for part in alt.split("+")] for alt in spec.split("|")]
    atoms = [a for alt in alts for a in alt]
    if len(atoms) > 1 and all(a.partition(":")[0] in BUILDERS for a in atoms):
        return alts
    return [[spec.strip()]]


def make_atomic_provider(spec: str, train: ad.AnnData | None = None) -> GeneTable:
    kind, _, arg = spec.partition(":")
    if kind not in BUILDERS:
        raise InputError(f"unknown feature spec {spec!r}; expected one of {sorted(BUILDERS)}, or sources joined "
                         "by '+' (concatenate) or '|' (first that has the gene), e.g. 'go', 'expr|go', 'file:emb.npz'")
    return BUILDERS[kind](arg, train).with_options(spec=spec)


def build_spec(spec: str, train: ad.AnnData | None = None) -> tuple[GeneTable, list[list[GeneTable]]]:
    """(the provider a spec names, its atomic sources grouped as `parse_spec` groups them).

    In a `|` chain an optional source the screen does not ship (`AbsentSource`: bare `varm`) is left out
    and the table's `source` says so; the next alternative then sets the coordinates."""
    from biojepac.features.combine import concat, fallback

    alts, parts, absent = parse_spec(spec), [], []
    for alt in alts:
        try:
            parts.append([make_atomic_provider(a, train) for a in alt])
        except AbsentSource as err:
            if len(alts) == 1:
                raise
            absent.append(f"{'+'.join(alt)}: left out ({str(err).partition(': ')[2]})")
    if not parts:
        raise InputError(f"feature spec {spec!r}: none of its sources is available ({'; '.join(absent)})")
    tables = [p[0] if len(p) == 1 else concat(p, "+".join(t.spec for t in p)) for p in parts]
    table = tables[0] if len(tables) == 1 else fallback(tables, spec)
    if absent:
        table = table.with_options(spec=spec, source="; ".join([*absent, table.source]))
    return table, parts


def make_provider(spec: str, train: ad.AnnData | None = None) -> GeneTable:
    """The provider a spec names, built on `train` where a source needs the training screen."""
    return build_spec(spec, train)[0]


def resolve_features(features, train: ad.AnnData, default: str = DEFAULT_FEATURES) -> GeneTable:
    """What a model's `features` argument may be, as a provider: a spec string (built on `train`), a
    provider (kept), a dict gene -> vector, or None (the `default` spec, `DEFAULT_FEATURES` unless given).
    Every model resolves its features here, so all share one default."""
    import numpy as np

    if features is None:
        return make_provider(default, train)
    if isinstance(features, str):
        return make_provider(features, train)
    if isinstance(features, dict):
        keys = tuple(features)
        return GeneTable(name=f"dict{len(keys)}", keys=keys, matrix=np.stack([np.asarray(features[k]) for k in keys]),
                         source="in-memory dict")
    return features


__all__ = ["DEFAULT_FEATURES", "VARM_KEYS", "AbsentSource", "FeatureProvider", "GeneTable", "build_spec", "make_provider", "parse_spec",
           "resolve_features"]
