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


# Harmonised lookups use the symbol table shipped with the package (no shared data needed).
HUMAN = GeneTable(name="h", keys=("MARCHF8", "QARS1", "EPRS1", "WWTR1", "TAFAZZIN", "SEPT7"),
                  matrix=np.arange(18, dtype=np.float32).reshape(6, 3), source="test", spec="file:h.npz")


def test_outdated_symbols_aliases_and_ensembl_ids_match_current_keys():
    v = HUMAN.vectors(["MARCH8", "QARS", "ENSG00000136628.17", "MARCH8+QARS"])
    np.testing.assert_array_equal(v[:3], HUMAN.matrix[[0, 1, 2]])
    np.testing.assert_array_equal(v[3], HUMAN.matrix[0] + HUMAN.matrix[1])
    assert HUMAN.match("MARCH8") == (0, "harmonised") and HUMAN.match("MARCHF8") == (0, "exact")
    # The key side is harmonised too: an old key (SEPT7) answers to the current symbol.
    assert HUMAN.match("SEPTIN7") == (5, "harmonised")
    assert HUMAN.symbol_keys() == ("MARCHF8", "QARS1", "EPRS1", "WWTR1", "TAFAZZIN", "SEPTIN7")


def test_ambiguous_alias_is_reported_never_guessed():
    assert HUMAN.match("TAZ") == (None, "ambiguous: TAFAZZIN/WWTR1")
    assert HUMAN.missing(["TAZ", "MARCH8", "NOTAGENE1"]) == ["NOTAGENE1", "TAZ"]
    with pytest.raises(InputError) as err:
        HUMAN.vectors(["MARCH8", "TAZ", "NOTAGENE1"])
    msg = str(err.value)
    assert "feature spec 'file:h.npz'" in msg and "NOTAGENE1" in msg
    assert "TAZ (ambiguous alias of TAFAZZIN/WWTR1)" in msg and "MARCH8" not in msg


def test_exact_keys_win_and_harmonising_can_be_off():
    table = GeneTable(name="t", keys=("SEPT7", "SEPTIN7"), matrix=np.eye(2, dtype=np.float32))
    assert table.match("SEPT7") == (0, "exact") and table.match("SEPTIN7") == (1, "exact")
    assert table.symbol_keys() == ("SEPT7", "SEPTIN7")  # the current symbol is taken: nothing merged
    off = HUMAN.with_options(harmonize=False)
    assert off.missing(["MARCH8", "MARCHF8"]) == ["MARCH8"]


def test_restrict_keeps_harmonised_matches(tmp_path):
    small = restrict(HUMAN, ["MARCH8", "QARS1", "NOTAGENE1"])
    assert small.keys == ("MARCHF8", "QARS1")
    small.save(tmp_path / "s.npz")
    back = GeneTable.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.vectors(["MARCH8"])[0], HUMAN.matrix[0])
    assert back.spec == "file:h.npz" and back.harmonize
