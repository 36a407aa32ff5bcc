"""Build the gene symbol table that ships with biojepac (`src/biojepac/data/resources/human_gene_symbols.tsv.xz`).

Input: `human_gene_ids.tsv.gz` (columns symbol, entrez_id, gene_type, ensembl_ids, aliases, name; built from
Bioconductor org.Hs.eg.db 3.16.0, i.e. NCBI Entrez Gene 2022-09-12). Output: the three columns that
harmonisation reads (symbol, ensembl_ids, aliases) for every gene except `biological-region` records
(enhancers and other regulatory regions, never a screen's gene), sorted by symbol, xz-compressed.
The same input gives byte-identical output.

Run: `.venv/bin/python scripts/build_symbol_table.py [--src ../shared/data/human_gene_ids.tsv.gz]`
"""

import argparse
import csv
import pathlib

import pandas as pd
from biojepac.io import write_xz_tsv

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "human_gene_ids.tsv.gz"
DST = REPO / "src" / "biojepac" / "data" / "resources" / "human_gene_symbols.tsv.xz"
COLUMNS = ["symbol", "ensembl_ids", "aliases"]


def build(src: pathlib.Path, dst: pathlib.Path) -> pd.DataFrame:
    df = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    df = df[(df["gene_type"] != "biological-region") & (df["symbol"] != "")]
    df = df[COLUMNS].sort_values("symbol", kind="stable").reset_index(drop=True)
    write_xz_tsv(df, dst)
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=pathlib.Path, default=DST)
    args = parser.parse_args()
    df = build(args.src, args.dst)
    print(f"wrote {args.dst}: {len(df):,} genes, {args.dst.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
