"""`screen:PATH`: another screen's per-perturbation responses as features, through harmonised symbols."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.data import schema
from biojepac.errors import InputError
from biojepac.features import make_provider

GENES = ["MARCHF8", "KLF1", "GATA1", "TP53", "MYC", "SGK1", "MAPK1", "HK2", "CBL", "SET", "BPGM", "CNN1"]


def exact_screen(deltas: dict[str, np.ndarray], genes: list[str], seed: int = 0) -> ad.AnnData:
    """log1p cells whose pseudobulk deltas are exactly `deltas` (pairs of cells at mean +- noise)."""
    rng = np.random.default_rng(seed)
    ctrl = 3.0 + rng.uniform(-0.5, 0.5, len(genes))
    rows, labels = [], []
    for label, mean in [(schema.CONTROL, ctrl), *((k, ctrl + d) for k, d in deltas.items())]:
        noise = rng.normal(0, 0.1, len(genes))
        rows += [mean + noise, mean - noise]
        labels += [label, label]
    obs = pd.DataFrame({"target_gene": labels, "context": "c1", "batch": "b0"}, index=[f"c{i}" for i in range(len(rows))])
    return ad.AnnData(X=sp.csr_matrix(np.asarray(rows, np.float32)), obs=obs, var=pd.DataFrame(index=genes))


def test_screen_vectors_are_the_pca_scores_of_its_deltas(tmp_path):
    rng = np.random.default_rng(0)
    src_genes = ["MARCH8", *GENES[1:]]  # the source screen writes the outdated symbol
    targets = ["MARCH8", "KLF1", "GATA1", "TP53", "MYC", "NOTMEASURED1"]
    d = {t: rng.normal(0, 0.5, len(src_genes)) for t in targets}
    d["KLF1+GATA1"] = d["KLF1"] + d["GATA1"]  # combinations are not one gene's response: left out
    exact_screen(d, src_genes).write_h5ad(tmp_path / "other.h5ad")
    train = exact_screen({"SGK1": rng.normal(0, 0.5, len(GENES))}, GENES, seed=1)

    table = make_provider(f"screen:{tmp_path / 'other.h5ad'}", train)
    assert table.spec == f"screen:{tmp_path / 'other.h5ad'}" and table.dim == 5  # 6 targets, centred: rank 5
    # Looked up by the current symbol; the target's measured response wins over its loading.
    v = table.vectors(["MARCHF8", "KLF1", "GATA1", "TP53", "MYC", "NOTMEASURED1"])
    d_pg = np.stack([d[t] for t in targets])
    dc = d_pg - d_pg.mean(0)
    np.testing.assert_allclose(v @ v.T, dc @ dc.T, atol=1e-4)  # scores U S: the same Gram matrix
    # A measured gene never perturbed there: its loading times the screen's on-target change.
    _, s, vt = np.linalg.svd(dc, full_matrices=False)
    on_target = np.sqrt(np.mean([d[t][src_genes.index(t)] ** 2 for t in targets[:5]]))
    np.testing.assert_allclose(np.abs(table.vectors(["SGK1"])[0]), np.abs(vt[:5, 5] * on_target), atol=1e-4)
    assert table.missing(["ZNF1ZZ", "MAPK1"]) == ["ZNF1ZZ"]


def test_screen_spec_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        make_provider(f"screen:{tmp_path / 'nope.h5ad'}")
    one = exact_screen({"KLF1": np.ones(len(GENES))}, GENES)
    one.write_h5ad(tmp_path / "one.h5ad")
    with pytest.raises(InputError, match="at least 2 single-gene perturbations"):
        make_provider(f"screen:{tmp_path / 'one.h5ad'}")


def test_mcfaline_lines_as_features_for_one_another(shared_data_dpath, tmp_path):
    """Each McFaline23 line's responses as features for another line; the source writes SGK1 as SGK."""
    from biojepac.data.recipes import load_norman_mcfaline

    full = load_norman_mcfaline(shared_data_dpath / "norman19_mcfaline23_devel.h5ad")
    mcf = full[(full.obs["dataset"] == "mcfaline23").to_numpy()].copy()
    targets = sorted(set(mcf.obs[schema.PERT_COL].astype(str)) - {schema.CONTROL})
    for src, dst in (("A172", "T98G"), ("T98G", "U87MG"), ("U87MG", "A172")):
        source = mcf[(mcf.obs[schema.CONTEXT_COL] == src).to_numpy()].copy()
        source.obs[schema.PERT_COL] = source.obs[schema.PERT_COL].astype(str).replace({"SGK1": "SGK"})
        source.write_h5ad(tmp_path / f"{src}.h5ad")
        train = mcf[(mcf.obs[schema.CONTEXT_COL] == dst).to_numpy()].copy()
        table = make_provider(f"screen:{tmp_path / src}.h5ad", train)
        assert table.missing(targets) == [] and table.dim == len(targets) - 1
        v = table.vectors(targets)
        assert np.all(np.isfinite(v)) and np.linalg.matrix_rank(v) == len(targets) - 1
        # The same vectors as the PCA of the source line's deltas computed here, on the source's genes.
        from biojepac.features.screens import screen_deltas

        names, d_pg = screen_deltas(source)
        order = [names.index("SGK" if t == "SGK1" else t) for t in targets]
        dc = d_pg[order] - d_pg[order].mean(0)
        np.testing.assert_allclose(v @ v.T, dc @ dc.T, rtol=1e-4, atol=1e-6)
