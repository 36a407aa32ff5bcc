"""Map the gene names screens use (outdated symbols, aliases, Ensembl IDs) to current symbols.

The table is a TSV (optionally gzip- or xz-compressed) with columns `symbol, ensembl_ids, aliases` (more
are ignored), the list columns comma-separated. One ships with the package (`load_symbols()`,
`resources/human_gene_symbols.tsv.xz`, built by `scripts/build_symbol_table.py` from org.Hs.eg.db 3.16.0,
NCBI Entrez Gene 2022-09-12; see `resources/README.md`); `SymbolTable.load(PATH)` reads another.

Rules, in order, for each input name:
1. a current symbol is kept;
2. an Ensembl gene ID (version suffix ignored) that names one gene maps to its symbol;
3. an alias of exactly one gene maps to that gene's symbol;
4. an alias of several genes is *ambiguous* and left unchanged (TAZ is an alias of both WWTR1 and
   TAFAZZIN) -- except, when `successor=True`, if exactly one candidate's symbol is the alias plus a
   number. That is how HGNC renamed many genes (QARS -> QARS1, EPRS -> EPRS1), and the old symbol then
   lingers as an alias elsewhere (QARS is also an alias of EPRS1). Such renames are recorded as
   `alias_successor` so they can be audited;
5. anything else is *unknown* and left unchanged.
Two inputs that would end up with the same symbol are a *collision*: neither is renamed (nothing is
merged), and both are reported.
"""

import csv
import dataclasses
import functools
import pathlib
import re

import anndata as ad
import pandas as pd

from biojepac.data import schema
from biojepac.errors import InputError

TABLE_COLUMNS = ("symbol", "entrez_id", "gene_type", "ensembl_ids", "aliases", "name")
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")
PACKAGED_SYMBOLS_FPATH = pathlib.Path(__file__).resolve().parent / "resources" / "human_gene_symbols.tsv.xz"
"""Human gene symbols, their Ensembl IDs and aliases, shipped with the package."""


@dataclasses.dataclass(frozen=True)
class SymbolTable:
    """Lookups built from the gene ID table."""

    fpath: str
    """Where the table was read from (recorded with every mapping)."""
    symbols: frozenset[str]
    """Current official symbols."""
    ensembl: dict[str, tuple[str, ...]]
    """Ensembl gene ID -> the symbol(s) it belongs to."""
    aliases: dict[str, tuple[str, ...]]
    """Alias / previous symbol -> the current symbol(s) that list it."""

    @classmethod
    def load(cls, fpath: str | pathlib.Path) -> "SymbolTable":
        fpath = pathlib.Path(fpath)
        if not fpath.is_file():
            raise InputError(f"{fpath}: gene symbol table not found")
        df = pd.read_csv(fpath, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
        missing = [c for c in ("symbol", "ensembl_ids", "aliases") if c not in df.columns]
        if missing:
            raise InputError(f"{fpath}: gene symbol table column {missing[0]!r} not found; columns are {list(df.columns)}")
        return cls(
            fpath=str(fpath),
            symbols=frozenset(df["symbol"][df["symbol"] != ""]),
            ensembl=_invert(df, "ensembl_ids"),
            aliases=_invert(df, "aliases"),
        )

    def resolve(self, name: str, successor: bool = True) -> tuple[str, tuple[str, ...]]:
        """`(how, candidates)`: how is current, ensembl, alias, alias_successor, ambiguous or unknown."""
        if name in self.symbols:
            return "current", (name,)
        m = _ENSEMBL_VERSION.match(name)
        key = m.group(1) if m else name
        if key in self.ensembl:
            cands = self.ensembl[key]
            return ("ensembl" if len(cands) == 1 else "ambiguous"), cands
        cands = self.aliases.get(name, ())
        if len(cands) == 1:
            return "alias", cands
        if len(cands) > 1:
            numbered = [c for c in cands if re.fullmatch(re.escape(name) + r"\d+", c)]
            if successor and len(numbered) == 1:
                return "alias_successor", (numbered[0],)
            return "ambiguous", cands
        return "unknown", ()

    def canonical(self, name: str) -> str | None:
        """The one current symbol `name` stands for (itself when current or unknown); None when ambiguous."""
        rule, cands = self.resolve(name)
        if rule == "ambiguous":
            return None
        return cands[0] if cands else name


@functools.lru_cache(maxsize=1)
def load_symbols() -> SymbolTable:
    """The symbol table shipped with the package (read once per process, about 0.5 s)."""
    return SymbolTable.load(PACKAGED_SYMBOLS_FPATH)


def get_symbols(fpath: str | pathlib.Path) -> SymbolTable:
    """A symbol table by path; `packaged` names the one shipped with the package."""
    return load_symbols() if str(fpath) == "packaged" else SymbolTable.load(fpath)


def _invert(df: pd.DataFrame, col: str) -> dict[str, tuple[str, ...]]:
    """`key -> symbols` for a comma-separated list column (a plain loop: ~70k keys, faster than groupby)."""
    out: dict[str, set[str]] = {}
    for symbol, keys in zip(df["symbol"], df[col]):
        for key in keys.split(","):
            if key:
                out.setdefault(key, set()).add(symbol)
    return {k: tuple(sorted(v)) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class GeneMapReport:
    """What harmonisation did to a list of names."""

    renamed: dict[str, str]
    """Input name -> new symbol, for every name that changed."""
    how: dict[str, str]
    """Input name -> rule used (ensembl, alias, alias_successor), for every renamed name."""
    ambiguous: dict[str, tuple[str, ...]]
    """Input name -> candidate symbols; left unchanged."""
    collisions: dict[str, tuple[str, ...]]
    """Symbol -> the inputs that would all become it; none of them renamed."""
    unknown: tuple[str, ...]
    """Names found nowhere in the table; left unchanged."""
    n_current: int
    """Names that already were current symbols."""

    def to_uns(self, table_fpath: str) -> dict:
        """An h5ad-writable record (lists joined with commas)."""
        return {
            "table": table_fpath,
            "renamed": dict(self.renamed),
            "how": dict(self.how),
            "ambiguous": {k: ",".join(v) for k, v in self.ambiguous.items()},
            "collisions": {k: ",".join(v) for k, v in self.collisions.items()},
            "unknown": list(self.unknown),
            "n_current": self.n_current,
        }

    def summary(self) -> str:
        amb = ", ".join(f"{k} ({'/'.join(v)})" for k, v in list(self.ambiguous.items())[:5])
        return (
            f"{self.n_current} current, {len(self.renamed)} renamed, {len(self.ambiguous)} ambiguous"
            f"{' [' + amb + ']' if amb else ''}, {len(self.collisions)} collisions, {len(self.unknown)} unknown"
        )


def harmonize_names(names: list[str], table: SymbolTable, *, successor: bool = True) -> tuple[list[str], GeneMapReport]:
    """Map each name per the module rules; returns the new names (same order) and the report."""
    unique = list(dict.fromkeys(names))
    proposed, how, ambiguous, unknown, n_current = {}, {}, {}, [], 0
    for name in unique:
        rule, cands = table.resolve(name, successor=successor)
        if rule == "current":
            n_current += 1
        elif rule == "ambiguous":
            ambiguous[name] = cands
        elif rule == "unknown":
            unknown.append(name)
        else:
            proposed[name], how[name] = cands[0], rule

    # A target claimed by more than one input (or already present as a current name) is a collision.
    claims: dict[str, list[str]] = {}
    for name, target in proposed.items():
        claims.setdefault(target, []).append(name)
    present = set(unique)
    collisions = {}
    for target, srcs in claims.items():
        owners = ([target] if target in present else []) + srcs
        if len(owners) > 1:
            collisions[target] = tuple(owners)
            for src in srcs:
                del proposed[src], how[src]
    report = GeneMapReport(
        renamed=proposed, how=how, ambiguous=ambiguous, collisions=collisions, unknown=tuple(unknown), n_current=n_current
    )
    return [proposed.get(n, n) for n in names], report


def harmonize_genes(adata: ad.AnnData, table: SymbolTable, *, successor: bool = True) -> tuple[ad.AnnData, GeneMapReport]:
    """A copy of `adata` whose var index holds current symbols; old names in `var["original_name"]`.

    The mapping is recorded in `uns["biojepac"]["gene_map"]`.
    """
    old = [str(g) for g in adata.var_names]
    new, report = harmonize_names(old, table, successor=successor)
    out = adata.to_memory() if adata.isbacked else adata.copy()
    out.var["original_name"] = old
    out.var_names = pd.Index(new)
    prov = dict(out.uns.get(schema.UNS_KEY, {}))
    prov["gene_map"] = report.to_uns(table.fpath)
    out.uns[schema.UNS_KEY] = prov
    return out, report


def harmonize_labels(labels, table: SymbolTable, *, successor: bool = True) -> tuple[list[str], GeneMapReport]:
    """Harmonise perturbation labels: each gene of a combination `A+B` is mapped; controls stay as they are."""
    labels = [str(x) for x in labels]
    genes = [g for lab in dict.fromkeys(labels) if lab != schema.CONTROL for g in schema.split_combo(lab)]
    new_genes, report = harmonize_names(genes, table, successor=successor)
    mapping = dict(zip(genes, new_genes))
    out = [
        lab if lab == schema.CONTROL else schema.COMBO_SEP.join(mapping[g] for g in schema.split_combo(lab))
        for lab in labels
    ]
    return out, report
