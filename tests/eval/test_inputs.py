"""Input checks and the counts -> log1p normalisation (bit-identical to scanpy, never in place)."""

import numpy as np
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.eval.inputs import check_pair, read_scored_screen


@pytest.mark.parametrize("sparse", [True, False])
def test_normalisation_is_scanpys_bit_for_bit(screen_factory, sparse):
    sc = pytest.importorskip("scanpy")
    adata = screen_factory(1, sparse=sparse)
    adata.X[5] = 0  # a cell with no counts
    before = adata.X.copy()
    ours = read_scored_screen(adata, pert_col="target_gene", control="non-targeting")
    ref = adata.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    a = ours.x.toarray() if sparse else ours.x
    b = ref.X.toarray() if sparse else ref.X
    assert ours.was_counts and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    after = adata.X
    assert np.array_equal(after.toarray() if sparse else after, before.toarray() if sparse else before)


def test_clear_errors(screen_factory):
    kw = dict(pert_col="target_gene", control="non-targeting")
    real = read_scored_screen(screen_factory(1), **kw)
    shuffled = screen_factory(2)
    shuffled = shuffled[:, ::-1].copy()
    with pytest.raises(InputError, match="different order"):
        check_pair(real, read_scored_screen(shuffled, **kw))
    fewer = screen_factory(2)
    fewer = fewer[fewer.obs.target_gene != "G007"].copy()
    with pytest.raises(InputError, match="perturbations differ.*G007"):
        check_pair(real, read_scored_screen(fewer, **kw))
    with pytest.raises(InputError, match="no control cells labelled 'ctrl'"):
        read_scored_screen(screen_factory(2), pert_col="target_gene", control="ctrl")
    bad = screen_factory(2, counts=False)
    bad.X = sp.csr_matrix(bad.X.toarray() * 4.0)  # fractional and far above log1p range
    with pytest.raises(InputError, match="log1p"):
        read_scored_screen(bad, **kw)
    with pytest.raises(InputError, match="obs column 'perturbation'"):
        read_scored_screen(screen_factory(2), pert_col="perturbation", control="non-targeting")


def test_mismatch_messages_name_genes_plainly(tmp_path, screen_factory):
    """Files read from disk hold numpy strings; messages still show 'G003', not np.str_('G003')."""
    kw = dict(pert_col="target_gene", control="non-targeting")
    real, reordered = screen_factory(1), screen_factory(2)
    real.write_h5ad(tmp_path / "real.h5ad")
    reordered[:, ::-1].copy().write_h5ad(tmp_path / "pred.h5ad")
    with pytest.raises(InputError, match=r"position 0: 'G119' vs 'G000'") as err:
        check_pair(read_scored_screen(tmp_path / "real.h5ad", **kw), read_scored_screen(tmp_path / "pred.h5ad", **kw))
    assert "np.str_" not in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("role", ["pred", "real", "screen"])
@pytest.mark.parametrize("sparse", [True, False])
def test_nan_and_inf_are_refused_naming_file_cell_and_gene(tmp_path, screen_factory, bad, role, sparse):
    """A non-finite value anywhere is an error naming its file, cell and gene, never a skipped perturbation."""
    from biojepac.eval.evaluate import evaluate

    files = {r: screen_factory(i, counts=False, sparse=sparse) for i, r in enumerate(("pred", "real", "screen"), 1)}
    x = files[role].X
    dense = x.toarray() if sparse else x
    row = int(np.flatnonzero(dense[:, 10] > 0)[3])  # a stored entry, so the sparse file holds it too
    dense[row, 10] = bad
    files[role].X = sp.csr_matrix(dense) if sparse else dense
    for r, adata in files.items():
        adata.write_h5ad(tmp_path / f"{r}.h5ad")
    label = files[role].obs.target_gene.iloc[row]
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "pred.h5ad", tmp_path / "real.h5ad", train=tmp_path / "screen.h5ad", profile="vcc",
                 n_boot=10)
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / f"{role}.h5ad")) and f"cell {row} (target_gene {label!r}), gene 'G010'" in msg, msg
    assert f"non-finite value {float(bad)}" in msg


@pytest.mark.parametrize("n_rows", [1, 3, 8, 13])
def test_row_totals_add_each_row_in_entry_order(n_rows):
    """Rows summed four at a time give each row's sequential float64 sum, whatever the rows' lengths
    (empty rows, the last one to three rows on their own)."""
    from biojepac.eval.inputs import row_totals

    rng = np.random.default_rng(n_rows)
    lengths = rng.integers(0, 40, n_rows)
    lengths[n_rows // 2] = 0
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    data = (rng.gamma(0.5, 4.0, indptr[-1]) * 1e3).astype(np.float32)  # sums that depend on the order
    expected = []
    for r in range(n_rows):
        total = 0.0
        for v in data[indptr[r] : indptr[r + 1]]:
            total += float(v)
        expected.append(total)
    assert row_totals(indptr, data).tolist() == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_value_range_equals_numpys(dtype):
    """The bit-pattern scan gives numpy's max, sign, fraction and finiteness answers, -0.0 and values just
    either side of the fraction tolerance included."""
    from biojepac.data.values import FRACTION_EPS, is_fractional
    from biojepac.eval.inputs import value_range

    rng = np.random.default_rng(0)
    base = np.round(rng.gamma(0.5, 4.0, 5000)).astype(dtype)
    cases = [base, np.zeros(7, dtype)]
    if dtype != np.int32:
        near = np.array([3.0 + FRACTION_EPS * 0.5, 2.0 + FRACTION_EPS * 2, -0.0, 1e-30], dtype)
        cases += [np.r_[base, near[:1]], np.r_[base, near[1:2]], np.r_[near[2:3], base], np.full(3, -0.0, dtype),
                  np.log1p(rng.gamma(0.5, 4.0, 5000)).astype(dtype), np.r_[base, near[3]]]
        cases += [np.r_[base, bad] for bad in (np.nan, np.inf, -np.inf)]
    cases += [np.r_[base, dtype(-2)], np.r_[dtype(-1), base]]
    for vals in cases:
        vmax, negative, fractional, nonfinite = value_range(vals)
        assert nonfinite == (vals.dtype.kind == "f" and not np.isfinite(vals).all())
        if not nonfinite:  # NaN and inf are refused first: the other answers need only hold without them
            assert negative == bool((vals < 0).any())
            assert fractional == bool(is_fractional(vals).any())
        if not nonfinite and not negative:
            assert vmax == vals.max() and np.asarray(vmax).dtype == vals.dtype


@pytest.mark.parametrize("source", ["memory", "file"])
def test_unsorted_and_duplicate_entries_score_as_scipy_sums_them(screen_factory, tmp_path, source):
    """A CSR matrix whose rows are unsorted or hold a gene twice is read as scipy reads it (duplicates add
    up), on a copy: the caller's matrix keeps its layout. From a file, the matrix is checked as the arrays
    read (`h5read.CSRArrays`) before scipy gets it."""
    kw = dict(pert_col="target_gene", control="non-targeting")
    adata = screen_factory(3)
    want = read_scored_screen(adata, **kw).x.toarray()
    x = adata.X
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    order = np.lexsort((-x.indices, rows))  # every row's genes in decreasing order
    data, indices = x.data[order].copy(), x.indices[order].copy()
    split = data.copy()
    split[::2] = np.floor(split[::2] / 2)  # half of each such count as a second entry of the same gene
    dup_data = np.concatenate([split, (data - split)[::2]])
    dup_rows = np.concatenate([rows, rows[::2]])
    dup_cols = np.concatenate([indices, indices[::2]])
    by_row = np.argsort(dup_rows, kind="stable")
    dup_indptr = np.r_[0, np.cumsum(np.bincount(dup_rows, minlength=x.shape[0]))]
    for data, indices, indptr in ((data, indices, x.indptr), (dup_data[by_row], dup_cols[by_row], dup_indptr)):
        layout = sp.csr_matrix((data, indices, indptr), shape=x.shape)
        assert not layout.has_canonical_format
        other = adata.copy()
        other.X = sp.csr_matrix((data, indices, indptr), shape=x.shape)  # no flags cached
        if source == "file":
            other.write_h5ad(tmp_path / "layout.h5ad")
        got = read_scored_screen(other if source == "memory" else tmp_path / "layout.h5ad", **kw).x
        assert sp.csr_matrix((got.data, got.indices, got.indptr), shape=x.shape).has_canonical_format
        np.testing.assert_array_equal(got.toarray(), want)  # log1p of the summed counts, not a sum of log1p
        assert np.array_equal(other.X.indices, indices) and np.array_equal(other.X.data, data)


@pytest.mark.parametrize("source", ["memory", "file"])
@pytest.mark.parametrize("fault", ["gene index too large", "negative gene index", "indptr falls"])
def test_malformed_csr_is_refused_naming_the_file(screen_factory, tmp_path, fault, source):
    adata = screen_factory(4)
    x = adata.X
    indices, indptr = x.indices.copy(), x.indptr.copy()
    if fault == "gene index too large":
        indices[len(indices) // 2] = x.shape[1] + 5
    elif fault == "negative gene index":
        indices[0] = -1
    else:
        indptr[10] = indptr[12] + 1
    adata.X = sp.csr_matrix((x.data, indices, indptr), shape=x.shape)
    if source == "file":
        adata.write_h5ad(tmp_path / "screen.h5ad")
    with pytest.raises(InputError, match="screen.h5ad: X is not a valid CSR matrix"):
        read_scored_screen(adata if source == "memory" else tmp_path / "screen.h5ad",
                           pert_col="target_gene", control="non-targeting", name="screen.h5ad")


def test_a_csr_file_is_read_and_checked_before_scipy_is_loaded(screen_factory, tmp_path):
    """The scoring modules, the read and the checks of a CSR file load no scipy (0.26 s of CPU; three times
    that while the reads pre-fault their buffers): the checked screen keeps the arrays read, equal to the
    scipy matrix read from memory."""
    import subprocess
    import sys

    adata = screen_factory(5)
    adata.write_h5ad(tmp_path / "screen.h5ad")
    code = (
        "import sys, numpy as np\n"
        "import biojepac.eval.evaluate\n"
        "from biojepac.eval import h5read, inputs\n"
        f"parts = h5read.read_parts({str(tmp_path / 'screen.h5ad')!r}, 'target_gene')\n"
        "assert isinstance(parts.x, h5read.CSRArrays), type(parts.x)\n"
        "inputs.warm_up()\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if m.startswith('scipy'))\n"
        "sc = inputs.scored_screen(parts, pert_col='target_gene', control='non-targeting')\n"
        "assert isinstance(sc.x, h5read.CSRArrays) and sc.x.has_canonical_format\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if m.startswith('scipy'))\n"
        f"np.save({str(tmp_path / 'x.npy')!r}, sc.x.toarray())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    want = read_scored_screen(adata, pert_col="target_gene", control="non-targeting").x.toarray()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), want)
