"""GO-based gene embeddings: TF-IDF of the gene x GO-term matrix, then a seeded truncated SVD.

Reads the table shipped with the package (`features/data/human_gene_go.tsv.xz`: symbol, go_id, aspect;
built by `scripts/build_go_table.py`, GO annotations CC BY 4.0), the GO Consortium's GAF 2.2 file
(`goa_human.gaf[.gz]`), or a TSV with columns symbol, go_id, evidence, aspect (`human_gene_go.tsv.gz`).
Why TF-IDF + SVD rather than propagation over the GO graph: see docs/features.md
(short version: the ontology graph is not available offline, IDF already down-weights the broad terms
that propagation would add everywhere, and SVD merges co-annotated terms into shared directions).
"""

import dataclasses
import functools
import gzip
import lzma
import pathlib

import numpy as np
import pandas as pd
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.features.base import GeneTable, l2_normalize
from biojepac.features.svd import truncated_svd

PACKAGED_GO_FPATH = pathlib.Path(__file__).resolve().parent / "data" / "human_gene_go.tsv.xz"
"""Human gene -> GO annotations shipped with the package (see `features/data/README.md`)."""

GAF_COLUMNS = {2: "symbol", 3: "qualifier", 4: "go_id", 6: "evidence", 8: "aspect"}
"""0-based GAF 2.2 column -> our name (DB Object Symbol, Qualifier, GO ID, Evidence Code, Aspect)."""


@dataclasses.dataclass(frozen=True)
class GoConfig:
    annotations_fpath: pathlib.Path = PACKAGED_GO_FPATH
    """GAF 2.2 file, or a TSV with columns symbol, go_id, aspect (and evidence); default: the packaged table."""
    dim: int = 64
    """Embedding size (number of singular vectors kept)."""
    aspects: str = "PFC"
    """GO aspects to use: P (process), F (function), C (component)."""
    exclude_evidence: tuple[str, ...] = ("ND",)
    """Evidence codes to drop; ND ("no data") only points at the root terms."""
    min_genes_per_term: int = 2
    """Terms annotated to fewer genes cannot relate two genes, so they only add noise."""
    seed: int = 0
    """Seed of the randomized SVD."""


def read_go_annotations(fpath: pathlib.Path) -> pd.DataFrame:
    """symbol, go_id, evidence, aspect rows from a GAF 2.2 file or a TSV (NOT rows dropped; a TSV without
    an evidence column, such as the packaged table, gets evidence `NA`)."""
    fpath = pathlib.Path(fpath)
    if not fpath.is_file():
        raise InputError(f"GO annotation file not found: {fpath}")
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(fpath.suffix, open)
    with opener(fpath, "rt") as fd:
        first = fd.readline()
    if first.startswith("!"):  # GAF: '!gaf-version: 2.2' header, no column names
        df = pd.read_csv(fpath, sep="\t", comment="!", header=None, usecols=list(GAF_COLUMNS), dtype=str)
        df = df.rename(columns=GAF_COLUMNS)
        # A NOT qualifier says the gene is explicitly NOT annotated with the term.
        df = df[~df["qualifier"].fillna("").str.contains("NOT")].drop(columns="qualifier")
    else:
        df = pd.read_csv(fpath, sep="\t", dtype=str, keep_default_na=False)
        if "evidence" not in df.columns:
            df["evidence"] = "NA"
        need = {"symbol", "go_id", "evidence", "aspect"}
        if not need <= set(df.columns):
            raise InputError(f"{fpath}: expected GAF 2.2 or columns {sorted(need)}, found {list(df.columns)}")
    df = df[["symbol", "go_id", "evidence", "aspect"]].replace("", np.nan).dropna()
    return df.drop_duplicates().reset_index(drop=True)


@functools.lru_cache(maxsize=4)  # ~10 s on 2 busy cores; models and CLI often ask twice per process
def make_go_provider(cfg: GoConfig) -> GeneTable:
    """Unit-norm embeddings of every annotated gene (cosine geometry: shared specific terms -> close)."""
    df = read_go_annotations(cfg.annotations_fpath)
    df = df[df["aspect"].isin(list(cfg.aspects)) & ~df["evidence"].isin(cfg.exclude_evidence)]
    df = df[["symbol", "go_id"]].drop_duplicates()
    n_genes_per_term = df.groupby("go_id")["symbol"].transform("size")
    df = df[n_genes_per_term >= cfg.min_genes_per_term]
    if df.empty:
        raise InputError(f"{cfg.annotations_fpath}: no GO annotations left after filtering (aspects {cfg.aspects})")
    genes, gi = np.unique(df["symbol"].to_numpy(), return_inverse=True)
    terms, ti = np.unique(df["go_id"].to_numpy(), return_inverse=True)
    x = sp.csr_matrix((np.ones(len(df)), (gi, ti)), shape=(len(genes), len(terms)))
    # TF is binary (a gene has a term or not); IDF down-weights terms most genes share.
    idf = np.log(len(genes) / np.asarray(x.sum(0)).ravel())
    x = sp.csr_matrix(x @ sp.diags(idf))
    x = sp.diags(1.0 / np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel()).clip(1e-12)) @ x
    u, s, _ = truncated_svd(x, cfg.dim, seed=cfg.seed)
    return GeneTable(
        name=f"go-tfidf-svd{u.shape[1]}",
        keys=tuple(genes.tolist()),
        matrix=l2_normalize(u * s),
        source=str(cfg.annotations_fpath),
    )
