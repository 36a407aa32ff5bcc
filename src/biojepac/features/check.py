"""`biojepac features check`: which source of a feature spec covers each of a screen's perturbations,
and the nearest neighbours of a few genes, so a user sees coverage before training.

For every single gene among the screen's perturbation labels (combinations split, controls dropped) and
every atomic source of the spec it reports how the gene is found: `exact`, `renamed` (through current
symbols: an outdated symbol, alias or Ensembl ID on either side, shown as label -> key), `ambiguous`
(an alias of several genes, never guessed) or `missing`; then which source the combined spec takes it
from (`|`: the first that has it; `+`: every part that has it) and the genes nothing covers.
"""

import dataclasses
import json
import pathlib

import numpy as np

from biojepac.data import schema
from biojepac.features import DEFAULT_FEATURES, build_spec
from biojepac.features.base import GeneTable, l2_normalize


@dataclasses.dataclass(frozen=True)
class FeaturesCheckCommand:
    screen: pathlib.Path
    """Screen (.h5ad, canonical schema) whose perturbations to check; `expr` and `onehot` are built on it."""
    features: str = DEFAULT_FEATURES
    """Feature spec to check (docs/features.md), e.g. varm|expr|go (default), expr|go, expr+go, go, screen:OTHER.h5ad, file:EMB.npz."""
    genes: tuple[str, ...] = ()
    """Genes whose nearest neighbours to list; default: the first `n_genes` covered perturbation genes."""
    n_genes: int = 3
    """Genes to list neighbours for when --genes is not given."""
    n_neighbours: int = 5
    """Neighbours listed per gene (cosine similarity in the spec's feature space, centred)."""
    out: pathlib.Path | None = None
    """Also write the report as JSON here."""


def how_found(table: GeneTable, gene: str) -> str:
    row, how = table.match(gene)
    if how == "harmonised":
        return f"renamed -> {table.keys[row]}"
    return how


def check_features(train, spec: str, genes: tuple[str, ...] = (), n_genes: int = 3, k: int = 5) -> dict:
    """The report as a dict (see the module docstring)."""
    labels = train.obs[schema.PERT_COL].astype(str).unique()
    targets = sorted({g for lab in labels for g in schema.split_combo(lab)} - {schema.CONTROL})
    table, groups = build_spec(spec, train)
    sources = [t for group in groups for t in group]
    per_gene = {}
    for g in targets:
        found = {t.spec: how_found(t, g) for t in sources}
        used = []
        for group in groups:  # `|`: the first group that has the gene; `+`: its parts that have it
            hits = [t.spec for t in group if table_has(t, g)]
            if hits:
                used = hits
                break
        per_gene[g] = {"sources": found, "used": used, "combined": how_found(table, g)}
    coverage = {t.spec: {"n_keys": len(t.keys), "name": t.name, "source": t.source,
                         "exact": sum(v["sources"][t.spec] == "exact" for v in per_gene.values()),
                         "renamed": sum(v["sources"][t.spec].startswith("renamed") for v in per_gene.values()),
                         "used_for": sum(t.spec in v["used"] for v in per_gene.values())} for t in sources}
    missing = {g: v["combined"] for g, v in per_gene.items() if table.match(g)[0] is None}
    probe = list(genes) or [g for g in targets if g not in missing][:n_genes]
    return {"screen": schema.source_name(train), "spec": spec, "table": table.describe() | {"source": table.source},
            "n_genes": len(targets), "n_covered": len(targets) - len(missing), "coverage": coverage,
            "missing": missing, "genes": per_gene, "neighbours": neighbours(table, probe, k)}


def table_has(table: GeneTable, gene: str) -> bool:
    return table.match(gene)[0] is not None


def neighbours(table: GeneTable, genes: list[str], k: int) -> dict[str, list[tuple[str, float]] | str]:
    """gene -> its k nearest keys by cosine similarity of the vectors centred on the table's mean row (what
    the models see once they centre their features; itself excluded); a gene without a vector -> why."""
    unit = l2_normalize(table.matrix - table.matrix.mean(0))
    out = {}
    for g in genes:
        row, how = table.match(g)
        if row is None:
            out[g] = how
            continue
        sim = unit @ unit[row]
        sim[row] = -np.inf
        top = np.argsort(-sim, kind="stable")[:k]
        out[g] = [(table.keys[i], round(float(sim[i]), 3)) for i in top]
    return out


def format_report(rep: dict) -> str:
    lines = [f"{rep['screen']}: {rep['n_genes']} perturbation genes; feature spec {rep['spec']!r} "
             f"({rep['table']['name']}, {rep['table']['dim']} dims) covers {rep['n_covered']}", "",
             "source                          genes  exact  renamed  used for"]
    for spec, c in rep["coverage"].items():
        lines.append(f"{spec[:30]:<30} {c['n_keys']:>7}  {c['exact']:>5}  {c['renamed']:>7}  {c['used_for']:>8}")
    # Sources the spec names but that do not apply to this screen (a bare `varm` it does not ship, a source
    # sharing too few genes to be mapped): said here, so a user never wonders where one went.
    lines += [note for note in rep["table"]["source"].split("; ") if "left out" in note]
    renamed = [(g, s, how) for g, v in rep["genes"].items() for s, how in v["sources"].items() if how.startswith("renamed")]
    if renamed:
        lines += ["", "renamed lookups: " + ", ".join(f"{g} {how.split(' ', 1)[1]} ({s})" for g, s, how in renamed[:20])]
    if rep["missing"]:
        lines += ["", f"no vector ({len(rep['missing'])}): " + ", ".join(
            f"{g} ({how})" if how.startswith("ambiguous") else g for g, how in rep["missing"].items())]
    if rep["neighbours"]:
        lines.append("")
    for g, nbrs in rep["neighbours"].items():
        shown = ", ".join(f"{n} {s:.2f}" for n, s in nbrs) if isinstance(nbrs, list) else f"no vector ({nbrs})"
        lines.append(f"nearest to {g}: {shown}")
    return "\n".join(lines)


def run_check(cmd: FeaturesCheckCommand) -> dict:
    from biojepac.data.load import read_training_screen

    rep = check_features(read_training_screen(cmd.screen), cmd.features, cmd.genes, cmd.n_genes, cmd.n_neighbours)
    print(format_report(rep))
    if cmd.out is not None:
        from biojepac.io import write_text_atomic

        write_text_atomic(cmd.out, json.dumps(rep, indent=1))
        print(f"wrote {cmd.out}")
    return rep
