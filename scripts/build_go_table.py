"""Build the gene -> GO table that ships with biojepac (`src/biojepac/features/data/human_gene_go.tsv.xz`).

Input: `human_gene_go.tsv.gz` (symbol, entrez_id, go_id, evidence, aspect; Bioconductor org.Hs.eg.db 3.16.0,
GO 2022-07-01) or a GO Consortium GAF 2.2 file (`goa_human.gaf.gz`). Output: the rows the GO embedding
uses, and nothing else:
- `NOT` qualifiers dropped (GAF), `ND` evidence dropped (it only points at the three root terms);
- one row per (symbol, go_id), evidence dropped (the embedding is binary);
- terms annotating fewer than `--min-genes` genes dropped (2: a term on one gene relates no two genes).
  No upper limit: the embedding's IDF weighting already gives broad terms little weight, and dropping
  them would leave genes annotated only with broad terms without a vector.
Columns symbol, go_id, aspect, sorted, xz-compressed: about 0.6 MB. The same input gives byte-identical
output, and `make_go_provider` on it equals `make_go_provider` on the input (tests/features/test_go.py).

GO annotations are CC BY 4.0 (Gene Ontology Consortium); see src/biojepac/features/data/README.md.

Run: `.venv/bin/python scripts/build_go_table.py [--src ../shared/data/human_gene_go.tsv.gz]`
"""

import argparse
import pathlib

import pandas as pd

from biojepac.features.go import GoConfig, read_go_annotations
from biojepac.io import write_xz_tsv

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "human_gene_go.tsv.gz"
DST = REPO / "src" / "biojepac" / "features" / "data" / "human_gene_go.tsv.xz"


def build(src: pathlib.Path, dst: pathlib.Path, min_genes: int) -> pd.DataFrame:
    cfg = GoConfig(annotations_fpath=src, min_genes_per_term=min_genes)
    df = read_go_annotations(src)
    df = df[~df["evidence"].isin(cfg.exclude_evidence)][["symbol", "go_id", "aspect"]].drop_duplicates()
    df = df[df.groupby("go_id")["symbol"].transform("size") >= min_genes]
    df = df.sort_values(["symbol", "go_id"], kind="stable").reset_index(drop=True)
    write_xz_tsv(df, dst)
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=pathlib.Path, default=DST)
    parser.add_argument("--min-genes", type=int, default=GoConfig.min_genes_per_term)
    args = parser.parse_args()
    df = build(args.src, args.dst, args.min_genes)
    print(f"wrote {args.dst}: {len(df):,} annotations, {df['symbol'].nunique():,} genes, "
          f"{df['go_id'].nunique():,} terms, {args.dst.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
