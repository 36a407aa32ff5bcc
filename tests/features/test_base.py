"""GeneTable: combinations, the control, loud missing genes, explicit fallbacks, save/load."""

import numpy as np
import pytest

from biojepac.errors import InputError
from biojepac.features import make_provider
from biojepac.features.base import GeneTable, restrict

MAT = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [4.0, 4.0, 4.0]], np.float32)


def make_table(**kw) -> GeneTable:
    return GeneTable(name="t", keys=("A", "B", "C"), matrix=MAT, source="test", **kw)


def test_singles_combos_and_control():
    v = make_table().vectors(["B", "A+B", "non-targeting", "A+B+C"])
    np.testing.assert_array_equal(v[0], MAT[1])
    np.testing.assert_array_equal(v[1], MAT[0] + MAT[1])
    np.testing.assert_array_equal(v[2], 0.0)
    np.testing.assert_array_equal(v[3], MAT.sum(0))
    mean = make_table(combine="mean").vectors(["A+B", "C"])
    np.testing.assert_allclose(mean[0], (MAT[0] + MAT[1]) / 2)
    np.testing.assert_array_equal(mean[1], MAT[2])


def test_missing_genes_are_listed_never_zeros():
    table = make_table()
    assert table.missing(["A", "X+B", "Y", "Y+A"]) == ["X", "Y"]
    with pytest.raises(InputError, match=r"X, Y"):
        table.vectors(["A", "X+B", "Y"])


def test_explicit_fallbacks():
    zeros = make_table(fallback="zeros").vectors(["X", "X+A"])
    np.testing.assert_array_equal(zeros[0], 0.0)
    np.testing.assert_array_equal(zeros[1], MAT[0])
    mean = make_table(fallback="mean").vectors(["X"])
    np.testing.assert_allclose(mean[0], MAT.mean(0))
    assert make_table(fallback="mean").describe()["fallback"] == "mean"


def test_duplicate_keys_rejected():
    with pytest.raises(InputError, match="duplicate"):
        GeneTable(name="t", keys=("A", "A"), matrix=np.zeros((2, 2)))


def test_save_load_and_restrict(tmp_path):
    table = make_table(combine="mean")
    table.save(tmp_path / "t.npz")
    back = GeneTable.load(tmp_path / "t.npz")
    assert back.keys == table.keys and back.combine == "mean"
    np.testing.assert_array_equal(back.matrix, MAT)
    small = restrict(table, ["C", "A", "Z"])
    assert small.keys == ("C", "A")
    np.testing.assert_array_equal(small.vectors(["A+C"])[0], (MAT[0] + MAT[2]) / 2)


def test_unknown_spec():
    with pytest.raises(InputError, match="unknown feature spec"):
        make_provider("word2vec")
