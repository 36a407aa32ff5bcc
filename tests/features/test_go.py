"""GO TF-IDF + SVD: genes sharing specific GO terms end up closer than unrelated genes."""

import gzip

import numpy as np
import pytest

from biojepac.errors import InputError
from biojepac.features.go import GoConfig, make_go_provider, read_go_annotations

# Two modules of genes with their own specific terms, plus a broad term everyone shares.
MODULES = {"A": ["GO:1", "GO:2", "GO:3"], "B": ["GO:4", "GO:5", "GO:6"], "C": ["GO:7", "GO:8"]}


def write_gaf(fpath, rows):
    lines = ["!gaf-version: 2.2", "!generated-by: test"]
    for sym, go, qual in rows:
        cols = ["UniProtKB", f"P{sym}", sym, qual, go, "PMID:1", "IDA", "", "P", "", "", "protein", "taxon:9606",
                "20220101", "GOC", "", ""]
        lines.append("\t".join(cols))
    with gzip.open(fpath, "wt") as fd:
        fd.write("\n".join(lines) + "\n")


def module_rows():
    rows = []
    for m, terms in MODULES.items():
        for i in range(4):
            rows += [(f"{m}{i}", t, "involved_in") for t in terms] + [(f"{m}{i}", "GO:ROOT", "involved_in")]
    return rows


def test_gaf_reader_drops_not_qualifiers(tmp_path):
    write_gaf(tmp_path / "g.gaf.gz", [("X", "GO:1", "involved_in"), ("X", "GO:2", "NOT|involved_in")])
    df = read_go_annotations(tmp_path / "g.gaf.gz")
    assert df[["symbol", "go_id"]].values.tolist() == [["X", "GO:1"]]


def test_modules_cluster(tmp_path):
    write_gaf(tmp_path / "g.gaf.gz", module_rows())
    table = make_go_provider(GoConfig(annotations_fpath=tmp_path / "g.gaf.gz", dim=3))
    v = table.vectors([f"{m}{i}" for m in MODULES for i in range(4)])
    cos = v @ v.T
    same = np.kron(np.eye(3), np.ones((4, 4))).astype(bool)
    assert cos[same].min() > 0.99
    assert cos[~same].max() < 0.1  # the shared root term carries no weight: idf = log(1) = 0


def test_tsv_and_gaf_agree(tmp_path):
    rows = module_rows()
    write_gaf(tmp_path / "g.gaf.gz", rows)
    with gzip.open(tmp_path / "g.tsv.gz", "wt") as fd:
        fd.write("symbol\tentrez_id\tgo_id\tevidence\taspect\n")
        fd.writelines(f"{s}\t1\t{g}\tIDA\tP\n" for s, g, _ in rows)
    a = make_go_provider(GoConfig(annotations_fpath=tmp_path / "g.gaf.gz", dim=3))
    b = make_go_provider(GoConfig(annotations_fpath=tmp_path / "g.tsv.gz", dim=3))
    assert a.keys == b.keys
    np.testing.assert_allclose(a.matrix, b.matrix, atol=1e-5)


def test_bad_file(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="x.tsv"):
        read_go_annotations(tmp_path / "x.tsv")


def test_real_go_shared_terms_closer_than_random(shared_data_dpath):
    fpath = shared_data_dpath / "human_gene_go.tsv.gz"
    table = make_go_provider(GoConfig(annotations_fpath=fpath))
    df = read_go_annotations(fpath)
    df = df[df["evidence"] != "ND"]
    size = df.groupby("go_id")["symbol"].transform("nunique")
    specific = df[(size >= 3) & (size <= 10)]  # small terms: their genes share a specific function
    rng = np.random.default_rng(0)
    members = specific.groupby("go_id")["symbol"].unique()
    pairs = [rng.choice(members.iloc[i], 2, replace=False) for i in rng.choice(len(members), 300, replace=False)]
    keys = np.asarray(table.keys)
    rand = [rng.choice(keys, 2, replace=False) for _ in range(300)]

    def mean_cos(ps):
        a, b = table.vectors([p[0] for p in ps]), table.vectors([p[1] for p in ps])
        return float((a * b).sum(1).mean())

    shared, random = mean_cos(pairs), mean_cos(rand)
    print(f"mean cosine: pairs sharing a small GO term {shared:.3f}, random pairs {random:.3f}")
    assert shared > random + 0.2, (shared, random)
    assert table.missing(["KLF1", "NOT_A_GENE_XYZ"]) == ["NOT_A_GENE_XYZ"]


def test_packaged_go_works_after_a_plain_install():
    """The default GO source ships with the package: no shared folder, no download."""
    from biojepac.features.go import PACKAGED_GO_FPATH

    assert GoConfig().annotations_fpath == PACKAGED_GO_FPATH
    assert PACKAGED_GO_FPATH.stat().st_size < 1_000_000
    assert (PACKAGED_GO_FPATH.parent / "README.md").read_text().count("CC BY 4.0") >= 1
    table = make_go_provider(GoConfig())
    assert len(table.keys) > 20_000 and table.dim == 64
    assert table.missing(["KLF1", "MARCH8", "QARS"]) == []  # outdated symbols harmonised on lookup


def test_packaged_go_is_the_build_script_output(shared_data_dpath, tmp_path):
    """Rebuilt from the shared table, byte for byte; and it keeps exactly the rows the embedding uses."""
    import importlib.util
    import pathlib

    from biojepac.features.go import PACKAGED_GO_FPATH

    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "build_go_table.py"
    spec = importlib.util.spec_from_file_location("build_go_table", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(shared_data_dpath / "human_gene_go.tsv.gz", tmp_path / "go.tsv.xz", min_genes=2)
    assert (tmp_path / "go.tsv.xz").read_bytes() == PACKAGED_GO_FPATH.read_bytes()

    def used_rows(fpath):  # what make_go_provider keeps, as a sorted array of (symbol, go_id)
        df = read_go_annotations(fpath)
        df = df[df["evidence"] != "ND"][["symbol", "go_id"]].drop_duplicates()
        df = df[df.groupby("go_id")["symbol"].transform("size") >= 2]
        return np.sort(df.to_numpy(str).astype(object).sum(1))

    np.testing.assert_array_equal(used_rows(PACKAGED_GO_FPATH), used_rows(shared_data_dpath / "human_gene_go.tsv.gz"))
