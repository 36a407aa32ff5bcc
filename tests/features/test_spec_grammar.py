"""The spec grammar: `A+B` (concatenate), `A|B` (first source that has the gene), `screen:PATH`."""

import numpy as np
import pytest

from biojepac.errors import InputError
from biojepac.features import make_provider, parse_spec
from biojepac.features.base import GeneTable
from biojepac.features.combine import RIDGE_GRID, concat, fallback, fit_map, loo_errors


def table(name, keys, matrix) -> GeneTable:
    return GeneTable(name=name, keys=tuple(keys), matrix=np.asarray(matrix, np.float32), source=name)


def test_parse_spec():
    assert parse_spec("expr|go+onehot") == [["expr"], ["go", "onehot"]]
    assert parse_spec("go") == [["go"]]
    assert parse_spec("file:a+b.npz") == [["file:a+b.npz"]]  # a path with '+' is not split
    with pytest.raises(InputError, match="unknown feature spec"):
        make_provider("expr|word2vec")


def test_concat_normalises_parts_and_marks_missing_ones():
    rng = np.random.default_rng(0)
    a = table("a", ["MARCH8", "KLF1", "GATA1"], rng.normal(0, 100, (3, 2)))  # MARCH8: outdated MARCHF8
    b = table("b", ["MARCHF8", "KLF1", "TP53", "MYC"], rng.normal(0, 0.01, (4, 3)))
    t = concat([a, b], "a+b")
    assert t.keys == ("GATA1", "KLF1", "MARCH8", "MYC", "TP53") and t.dim == 2 + 1 + 3 + 1 and t.spec == "a+b"
    v = t.vectors(["KLF1", "MARCH8", "TP53", "GATA1"])
    for block, src in ((slice(0, 2), a), (slice(3, 6), b)):  # unit RMS row norm per source
        rows = t.matrix[[t.match(k)[0] for k in src.symbol_keys()], block]
        assert np.sqrt((rows**2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(v[:, 2], [1, 1, 0, 1])  # indicator of source a
    np.testing.assert_array_equal(v[:, 6], [1, 1, 1, 0])  # indicator of source b
    np.testing.assert_array_equal(v[2, :3], 0.0)  # TP53 has no vector in a: zeros, not a guess
    np.testing.assert_allclose(v[0, 3:6] / v[1, 3:6], b.matrix[1] / b.matrix[0], rtol=1e-5)  # one scale per source


def test_fallback_keeps_the_first_source_and_maps_the_second_into_it():
    rng = np.random.default_rng(1)
    genes = [f"X{i}" for i in range(80)]
    b_mat = rng.normal(size=(80, 6))
    w, b0 = rng.normal(size=(6, 3)), rng.normal(size=3)
    a_mat = b_mat[:50] @ w + b0  # source a is an exact linear function of b on the genes it has
    a, b = table("a", genes[:50], a_mat), table("b", genes, b_mat)
    t = fallback([a, b], "a|b")
    assert t.dim == 3 and t.keys == tuple(genes)
    np.testing.assert_array_equal(t.vectors(genes[:50]), a.matrix)
    np.testing.assert_allclose(t.vectors(genes[50:]), b_mat[50:] @ w + b0, atol=0.05)
    assert "30 more genes" in t.source and "over 50 shared genes" in t.source


def test_fallback_leaves_out_a_source_it_cannot_map():
    a = table("a", ["G1", "G2", "G3"], np.eye(3))
    b = table("b", ["G1", "KLF1", "TP53"], np.ones((3, 2)))
    t = fallback([a, b], "a|b")
    assert t.keys == ("G1", "G2", "G3") and "left out, only 1 genes shared" in t.source
    with pytest.raises(InputError, match="feature spec 'a\\|b'.*KLF1"):
        t.vectors(["KLF1"])


def test_loo_errors_match_refitting_without_each_gene():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(25, 4)), rng.normal(size=(25, 2))
    fast = loo_errors(x, y, RIDGE_GRID[:4])
    for rel, err in zip(RIDGE_GRID[:4], fast):
        brute = 0.0
        for i in range(25):
            keep = np.arange(25) != i
            xk, yk = x[keep], y[keep]
            xc = xk - xk.mean(0)
            lam = rel * float((xc * xc).sum(1).mean())  # the penalty scale of the left-out fit differs
            w = np.linalg.solve(xc.T @ xc + lam * np.eye(4), xc.T @ (yk - yk.mean(0)))
            brute += float(((y[i] - (yk.mean(0) + (x[i] - xk.mean(0)) @ w)) ** 2).sum())
        assert err == pytest.approx(brute, rel=0.05)
    w, b, rel = fit_map(x, y)
    assert rel == RIDGE_GRID[int(np.argmin(loo_errors(x, y)))]


def test_default_takes_the_embedding_a_screen_ships_else_its_expression_embedding(random_screen):
    """`varm|expr|go`: a screen's `varm['gene_embedding']` sets the coordinates when shipped; without it the
    bare `varm` is left out (and said so) and `expr` does, exactly as the `expr` spec alone."""
    from biojepac.features import DEFAULT_FEATURES, AbsentSource, resolve_features

    assert DEFAULT_FEATURES == "varm|expr|go"
    screen = random_screen.copy()
    plain = resolve_features(None, screen)
    genes = list(screen.var_names[:4])
    np.testing.assert_array_equal(plain.vectors(genes), make_provider("expr", screen).vectors(genes))
    assert plain.spec == DEFAULT_FEATURES and plain.source.startswith("varm: left out")
    emb = np.random.default_rng(0).normal(size=(screen.n_vars, 7)).astype(np.float32)
    screen.varm["gene_embedding"] = emb
    shipped = resolve_features(None, screen)
    assert shipped.dim == 7 and shipped.name.startswith("varm:gene_embedding")
    np.testing.assert_array_equal(shipped.vectors(genes), emb[:4])
    with pytest.raises(AbsentSource, match="ships no gene embedding"):  # alone it is not optional
        make_provider("varm", random_screen)
    with pytest.raises(InputError, match=r"varm\['other'\]"):  # a key the user named is never skipped
        make_provider("varm:other|expr", random_screen)
