"""load_screen / validate_screen / check_same_genes: mapping, provenance, and one test per validation error."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from random_screen import build_random_screen

from biojepac.data import schema
from biojepac.data.load import CONTROL_ALIASES, ScreenColumns, check_same_genes, load_screen
from biojepac.errors import InputError

CANON = ScreenColumns(context="context", batch="batch", pert_type="pert_type")


def _write(adata, tmp_path, name="screen.h5ad"):
    fpath = tmp_path / name
    adata.write_h5ad(fpath)
    return fpath


def _md5(fpath) -> str:
    return hashlib.md5(fpath.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["csr", "dense", "backed"])
def test_load_roundtrip_and_file_untouched(tmp_path, layout):
    adata = build_random_screen(contexts=("c1", "c2"))
    expected = adata.X.toarray()
    if layout == "dense":
        adata.X = expected.copy()
    fpath = _write(adata, tmp_path)
    before = _md5(fpath)
    out = load_screen(fpath, CANON, backed=layout == "backed")
    assert out.isbacked == (layout == "backed")
    assert out.uns[schema.UNS_KEY]["values"] == "counts"
    assert out.uns[schema.UNS_KEY]["source"] == str(fpath)
    np.testing.assert_array_equal(out.obs[schema.PERT_COL].astype(str), adata.obs["target_gene"].astype(str))
    x = out.X[:] if layout == "backed" else out.X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    np.testing.assert_array_equal(x, expected)
    if layout == "backed":
        out.file.close()
    assert _md5(fpath) == before


def test_column_mapping_controls_and_combos(tmp_path):
    adata = build_random_screen(n_cells=60)
    obs = adata.obs.rename(columns={"target_gene": "gene", "context": "line", "batch": "gem"})
    labels = obs["gene"].astype(str).to_numpy().copy()
    labels[labels == "non-targeting"] = "ctrl"
    labels[1:4] = ["G001+ctrl", "G002+G003", "control"]
    obs["gene"] = labels
    obs["sg"] = [f"g{i % 3}" for i in range(len(obs))]
    adata.obs = obs.drop(columns=["pert_type"])
    fpath = _write(adata, tmp_path)
    cols = ScreenColumns(pert="gene", context="line", batch="gem", guide="sg", pert_type="CRISPRa",
                         control_labels=(schema.CONTROL, *CONTROL_ALIASES))
    out = load_screen(fpath, cols)
    got = out.obs[schema.PERT_COL].astype(str).to_numpy()
    assert got[1] == "G001" and got[2] == "G002+G003" and got[3] == schema.CONTROL
    assert (got[labels == "ctrl"] == schema.CONTROL).all()
    assert set(out.obs[schema.PERT_TYPE_COL]) == {"CRISPRa"}
    assert out.obs[schema.GUIDE_COL].iloc[4] == "g1"
    assert "gene" in out.obs.columns  # the source column is kept beside the canonical one


def test_default_context_and_batch(tmp_path):
    adata = build_random_screen(n_cells=50)
    adata.obs = adata.obs[["target_gene"]]
    out = load_screen(_write(adata, tmp_path), ScreenColumns(default_context="K562"))
    assert set(out.obs[schema.CONTEXT_COL]) == {"K562"} and set(out.obs[schema.BATCH_COL]) == {schema.DEFAULT_BATCH}


def test_log1p_detected(tmp_path):
    out = load_screen(_write(build_random_screen(counts=False), tmp_path), CANON)
    assert out.uns[schema.UNS_KEY]["values"] == "log1p"


# --- one test per validation error: the message names the file and the column / gene / value ---


def _expect_error(tmp_path, adata, *needles, columns=CANON, **kw):
    fpath = _write(adata, tmp_path)
    with pytest.raises(InputError) as err:
        load_screen(fpath, columns, **kw)
    msg = str(err.value)
    assert str(fpath) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_column(tmp_path):
    _expect_error(tmp_path, build_random_screen(), "'cell_line'", columns=ScreenColumns(context="cell_line"))


def test_missing_pert_type_column(tmp_path):
    _expect_error(tmp_path, build_random_screen(), "'modality'", columns=ScreenColumns(pert_type="modality"))


def test_bad_pert_type_value(tmp_path):
    adata = build_random_screen()
    adata.obs["pert_type"] = "CRISPRx"
    _expect_error(tmp_path, adata, "'CRISPRx'", "'pert_type'")


def test_no_controls_overall(tmp_path):
    adata = build_random_screen()
    adata = adata[adata.obs["target_gene"] != "non-targeting"].copy()
    _expect_error(tmp_path, adata, "no control cells", "'non-targeting'", "'target_gene'")


def test_control_alias_not_accepted_unless_asked(tmp_path):
    adata = build_random_screen()
    adata.obs["target_gene"] = adata.obs["target_gene"].astype(str).replace("non-targeting", "control")
    _expect_error(tmp_path, adata, "no control cells")
    cols = ScreenColumns(context="context", batch="batch", control_labels=("control",))
    assert (load_screen(_write(adata, tmp_path, "ok.h5ad"), cols).obs[schema.PERT_COL] == schema.CONTROL).sum() > 0


def test_no_controls_in_one_context(tmp_path):
    adata = build_random_screen(contexts=("c1", "c2"))
    drop = (adata.obs["context"] == "c2") & (adata.obs["target_gene"] == "non-targeting")
    _expect_error(tmp_path, adata[~drop].copy(), "context 'c2'", "no control cells")


def test_duplicate_gene(tmp_path):
    adata = build_random_screen()
    adata.var_names = ["G001" if g == "G007" else g for g in adata.var_names]
    _expect_error(tmp_path, adata, "duplicate gene", "'G001'")


def test_empty_gene_name(tmp_path):
    adata = build_random_screen()
    adata.var_names = ["" if g == "G004" else g for g in adata.var_names]
    _expect_error(tmp_path, adata, "empty gene name", "[4]")


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-2.0, "negative")])
@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_bad_values(tmp_path, bad, word, layout):
    adata = build_random_screen()
    x = adata.X.toarray()
    x[7, 3] = bad
    adata.X = sp.csr_matrix(x) if layout == "csr" else x
    msg = _expect_error(tmp_path, adata, word, "'cell7'", "'G003'")
    assert ("nan" in msg) if np.isnan(bad) else (repr(float(bad)) in msg)


def test_bad_value_found_in_backed_mode_beyond_first_chunk(tmp_path):
    adata = build_random_screen(n_cells=5000, n_genes=8)
    x = adata.X.toarray()
    x[4500, 2] = -1.0  # past the first 4096-row block
    adata.X = sp.csr_matrix(x)
    _expect_error(tmp_path, adata, "negative", "'cell4500'", "'G002'", backed=True)


def test_counts_expected_but_not_integer(tmp_path):
    adata = build_random_screen()
    x = adata.X.toarray()
    x[5, 6] = 2.5
    adata.X = sp.csr_matrix(x)
    _expect_error(tmp_path, adata, "counts expected", "2.5", "'cell5'", "'G006'", expect="counts")


def test_mixed_scale_rejected_unless_overridden(tmp_path):
    adata = build_random_screen()
    x = adata.X.toarray()
    x[0, 0] = 20.5  # decimals, and too large for log1p
    adata.X = sp.csr_matrix(x)
    _expect_error(tmp_path, adata, "neither counts nor log1p", "20.5")
    assert load_screen(_write(adata, tmp_path, "ok.h5ad"), CANON, expect="log1p").uns[schema.UNS_KEY]["values"] == "log1p"


def test_perturbation_with_zero_cells(tmp_path):
    adata = build_random_screen()
    adata.obs["target_gene"] = pd.Categorical(adata.obs["target_gene"], categories=[*adata.obs["target_gene"].unique(), "GHOST"])
    _expect_error(tmp_path, adata, "'GHOST'", "zero cells", "'target_gene'")


def test_empty_label(tmp_path):
    adata = build_random_screen()
    labels = adata.obs["target_gene"].astype(str).to_numpy().copy()
    labels[9] = "G001+"
    adata.obs["target_gene"] = labels
    _expect_error(tmp_path, adata, "empty perturbation label", "'G001+'")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.h5ad"):
        load_screen(tmp_path / "nope.h5ad")


def test_check_same_genes():
    a, b = build_random_screen(), build_random_screen()
    check_same_genes(a, b, "a.h5ad", "b.h5ad")
    c = b[:, ::-1].copy()
    with pytest.raises(InputError, match=r"order differs.*position 0 is 'G000' in a.h5ad but 'G039' in b.h5ad"):
        check_same_genes(a, c, "a.h5ad", "b.h5ad")
    d = b.copy()
    d.var_names = [("X" + g[1:]) if g == "G005" else g for g in d.var_names]
    with pytest.raises(InputError, match=r"only in a.h5ad: \['G005'\].*only in b.h5ad: \['X005'\]"):
        check_same_genes(a, d, "a.h5ad", "b.h5ad")
