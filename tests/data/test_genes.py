"""Gene symbol harmonisation on a tiny hand-written table, and on the real table when it is present."""

import gzip

import numpy as np
import pytest
from random_screen import build_random_screen

from biojepac.data import schema
from biojepac.data.genes import SymbolTable, harmonize_genes, harmonize_labels, harmonize_names
from biojepac.errors import InputError

ROWS = [
    ("WWTR1", "25937", "protein-coding", "ENSG00000018408", "TAZ", "WW domain containing transcription regulator 1"),
    ("TAFAZZIN", "6901", "protein-coding", "ENSG00000102125", "BTHS,TAZ", "tafazzin"),
    ("QARS1", "5859", "protein-coding", "ENSG00000172053", "GLNRS,QARS", "glutaminyl-tRNA synthetase 1"),
    ("EPRS1", "2058", "protein-coding", "ENSG00000136628", "EPRS,QARS", "glutamyl-prolyl-tRNA synthetase 1"),
    ("SEPTIN7", "989", "protein-coding", "ENSG00000122545", "SEPT7", "septin 7"),
    ("GAPDH", "2597", "protein-coding", "ENSG00000111640", "G3PD", "glyceraldehyde-3-phosphate dehydrogenase"),
]


@pytest.fixture
def table(tmp_path) -> SymbolTable:
    fpath = tmp_path / "ids.tsv.gz"
    with gzip.open(fpath, "wt") as f:
        f.write("symbol\tentrez_id\tgene_type\tensembl_ids\taliases\tname\n")
        for row in ROWS:
            f.write("\t".join(row) + "\n")
    return SymbolTable.load(fpath)


def test_rules(table):
    names = ["GAPDH", "SEPT7", "ENSG00000111640.12", "TAZ", "QARS", "EPRS", "NOTAGENE"]
    # GAPDH is current, so its Ensembl ID would collide with it: neither is renamed.
    new, rep = harmonize_names(names, table)
    assert new == ["GAPDH", "SEPTIN7", "ENSG00000111640.12", "TAZ", "QARS1", "EPRS1", "NOTAGENE"]
    assert rep.how == {"SEPT7": "alias", "QARS": "alias_successor", "EPRS": "alias"}
    assert rep.ambiguous == {"TAZ": ("TAFAZZIN", "WWTR1")}
    assert rep.collisions == {"GAPDH": ("GAPDH", "ENSG00000111640.12")}
    assert rep.unknown == ("NOTAGENE",) and rep.n_current == 1


def test_ensembl_maps_and_successor_rule_can_be_disabled(table):
    new, rep = harmonize_names(["ENSG00000172053", "G3PD", "QARS"], table, successor=False)
    assert new == ["QARS1", "GAPDH", "QARS"]
    assert rep.ambiguous == {"QARS": ("EPRS1", "QARS1")} and rep.how == {"ENSG00000172053": "ensembl", "G3PD": "alias"}


def test_two_aliases_of_one_gene_collide_and_are_not_merged(table):
    new, rep = harmonize_names(["QARS", "GLNRS"], table)
    assert new == ["QARS", "GLNRS"] and rep.collisions == {"QARS1": ("QARS", "GLNRS")} and rep.renamed == {}


def test_harmonize_genes_copies_and_records(table):
    adata = build_random_screen(n_genes=5)
    adata.var_names = ["SEPT7", "TAZ", "GAPDH", "QARS", "ZZZ"]
    before = list(adata.var_names)
    out, rep = harmonize_genes(adata, table)
    assert list(adata.var_names) == before  # caller untouched
    assert list(out.var_names) == ["SEPTIN7", "TAZ", "GAPDH", "QARS1", "ZZZ"]
    assert list(out.var["original_name"]) == before
    gm = out.uns[schema.UNS_KEY]["gene_map"]
    assert gm["renamed"] == {"SEPT7": "SEPTIN7", "QARS": "QARS1"} and gm["ambiguous"] == {"TAZ": "TAFAZZIN,WWTR1"}
    assert gm["table"] == table.fpath
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray())
    out.write_h5ad(table.fpath + ".h5ad")  # the record must be h5ad-writable


def test_harmonize_labels_splits_combos(table):
    labels = [schema.CONTROL, "SEPT7+QARS", "TAZ", "GAPDH+SEPT7", "SEPT7"]
    new, rep = harmonize_labels(labels, table)
    assert new == [schema.CONTROL, "SEPTIN7+QARS1", "TAZ", "GAPDH+SEPTIN7", "SEPTIN7"]
    assert "TAZ" in rep.ambiguous


def test_missing_table(tmp_path):
    with pytest.raises(InputError, match="nope.tsv"):
        SymbolTable.load(tmp_path / "nope.tsv")


def test_real_table(shared_data_dpath):
    table = SymbolTable.load(shared_data_dpath / "human_gene_ids.tsv.gz")
    new, rep = harmonize_names(["TAZ", "QARS", "SEPT7", "MARCH1", "ENSG00000111640", "GAPDH"], table)
    assert new == ["TAZ", "QARS1", "SEPTIN7", "MARCHF1", "ENSG00000111640", "GAPDH"]
    assert set(rep.ambiguous["TAZ"]) == {"WWTR1", "TAFAZZIN"}
    assert rep.how["QARS"] == "alias_successor"  # QARS is also an alias of EPRS1 in this table
    assert rep.collisions == {"GAPDH": ("GAPDH", "ENSG00000111640")}  # GAPDH's own Ensembl ID
    new, rep = harmonize_names(["ENSG00000172053"], table)
    assert new == ["QARS1"] and rep.how == {"ENSG00000172053": "ensembl"}


def test_canonical(table):
    assert [table.canonical(n) for n in ("GAPDH", "SEPT7", "QARS", "TAZ", "NOTAGENE")] == \
        ["GAPDH", "SEPTIN7", "QARS1", None, "NOTAGENE"]


def test_packaged_table_works_without_shared_data():
    """The table shipped with the package: usable after a plain install, same answers as the real table."""
    from biojepac.data.genes import PACKAGED_SYMBOLS_FPATH, get_symbols, load_symbols

    assert PACKAGED_SYMBOLS_FPATH.stat().st_size < 1_000_000
    table = load_symbols()
    assert get_symbols("packaged") is table and len(table.symbols) > 60_000
    new, rep = harmonize_names(["TAZ", "QARS", "SEPT7", "MARCH8", "ENSG00000136628.17", "GAPDH"], table)
    assert new == ["TAZ", "QARS1", "SEPTIN7", "MARCHF8", "EPRS1", "GAPDH"]
    assert set(rep.ambiguous["TAZ"]) == {"WWTR1", "TAFAZZIN"}
    assert table.canonical("MARCH8") == "MARCHF8" and table.canonical("TAZ") is None


def test_packaged_table_is_the_build_script_output(shared_data_dpath, tmp_path):
    import importlib.util
    import pathlib

    from biojepac.data.genes import PACKAGED_SYMBOLS_FPATH

    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "build_symbol_table.py"
    spec = importlib.util.spec_from_file_location("build_symbol_table", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(shared_data_dpath / "human_gene_ids.tsv.gz", tmp_path / "s.tsv.xz")
    assert (tmp_path / "s.tsv.xz").read_bytes() == PACKAGED_SYMBOLS_FPATH.read_bytes()
