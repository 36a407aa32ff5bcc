"""`biojepac features check`: coverage per source, renamed and ambiguous lookups, nearest neighbours."""

import json

import numpy as np

from biojepac import cli
from biojepac.features.check import check_features
from features.test_screens import GENES, exact_screen


def screen():
    rng = np.random.default_rng(0)
    perts = ["KLF1", "GATA1", "MARCH8", "TAZ", "NOTAGENE1", "KLF1+MYC"]  # MYC is measured; MARCH8 is MARCHF8
    return exact_screen({p: rng.normal(0, 0.3, len(GENES)) for p in perts}, GENES)


def test_report_counts_sources_and_names_what_is_missing():
    rep = check_features(screen(), "expr|go", genes=("MARCH8", "TAZ"), k=3)
    assert rep["n_genes"] == 6 and rep["n_covered"] == 4
    assert rep["missing"] == {"NOTAGENE1": "missing", "TAZ": "ambiguous: TAFAZZIN/WWTR1"}
    genes = rep["genes"]
    assert genes["MARCH8"]["sources"] == {"expr": "renamed -> MARCHF8", "go": "renamed -> MARCHF8"}
    assert genes["MARCH8"]["used"] == ["expr"] and genes["MYC"]["used"] == ["expr"]
    assert rep["coverage"]["expr"]["used_for"] == 4 and rep["coverage"]["go"]["used_for"] == 0  # all 4 are measured
    assert [n for n, _ in rep["neighbours"]["MARCH8"]] and len(rep["neighbours"]["MARCH8"]) == 3
    assert rep["neighbours"]["TAZ"] == "ambiguous: TAFAZZIN/WWTR1"
    plus = check_features(screen(), "expr+go", k=2)
    assert plus["genes"]["KLF1"]["used"] == ["expr", "go"]


def test_cli_prints_and_writes_json(tmp_path, capsys):
    fpath = tmp_path / "s.h5ad"
    screen().write_h5ad(fpath)
    assert cli.main(["features", "check", "--screen", str(fpath), "--features", "go", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "feature spec 'go'" in out and "renamed lookups: MARCH8 -> MARCHF8 (go)" in out
    assert "TAZ (ambiguous: TAFAZZIN/WWTR1)" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["n_covered"] == 4 and rep["spec"] == "go"


def test_default_spec_says_a_screen_ships_no_gene_embedding(tmp_path, capsys):
    fpath = tmp_path / "s.h5ad"
    screen().write_h5ad(fpath)
    assert cli.main(["features", "check", "--screen", str(fpath)]) == 0  # the default spec, varm|expr|go
    out = capsys.readouterr().out
    assert "feature spec 'varm|expr|go'" in out and "varm: left out (the training screen ships no gene embedding" in out
