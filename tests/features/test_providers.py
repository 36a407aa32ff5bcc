"""Expression PCA, embedding files, ESM-2 errors, guide k-mers, modality tags, one-hot indices."""

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biojepac.errors import InputError
from biojepac.features.esm import EsmConfig, make_esm_provider, read_fasta
from biojepac.features.expression import ExpressionConfig, make_expression_provider
from biojepac.features.files import load_embedding_file
from biojepac.features.guides import kmer_counts, make_guide_provider
from biojepac.features.modality import make_modality_provider, modality_ids
from biojepac.features.onehot import label_indices, make_onehot_provider, make_vocabulary

VECS = {"KLF1": [1.0, 2.0, 3.0], "GATA1": [0.5, -1.0, 0.0], "TP53": [0.0, 0.0, 7.0]}


def test_expression_loadings_match_dense_pca():
    rng = np.random.default_rng(0)
    # Four planted programmes with well-separated strengths, plus a little noise.
    q, _ = np.linalg.qr(rng.standard_normal((30, 4)))
    x = 3.0 + (rng.standard_normal((200, 4)) * [5.0, 4.0, 3.0, 2.0]) @ q.T + 0.01 * rng.standard_normal((200, 30))
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    table = make_expression_provider(adata, ExpressionConfig(dim=4, scale_by_singular_value=False))
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(table.matrix), np.abs(vt[:4].T), atol=1e-4)
    scaled = make_expression_provider(adata, ExpressionConfig(dim=4))
    np.testing.assert_allclose(np.abs(scaled.matrix), np.abs(vt[:4].T * s[:4] / s[0]), atol=1e-4)
    assert table.missing(["g3", "KLF1"]) == ["KLF1"]


@pytest.mark.parametrize("layout", ["npz-arrays", "npz-per-gene", "csv", "parquet"])
def test_embedding_files_roundtrip(tmp_path, layout):
    genes, mat = list(VECS), np.asarray(list(VECS.values()), np.float32)
    if layout == "npz-arrays":
        fpath = tmp_path / "e.npz"
        np.savez(fpath, genes=np.asarray(genes), vectors=mat)
    elif layout == "npz-per-gene":
        fpath = tmp_path / "e.npz"
        np.savez(fpath, **{g: np.asarray(v) for g, v in VECS.items()})
    else:
        fpath = tmp_path / f"e.{layout}"
        df = pd.DataFrame(mat, columns=["d0", "d1", "d2"]).assign(gene=genes)
        df.to_csv(fpath, index=False) if layout == "csv" else df.to_parquet(fpath)
    table = load_embedding_file(fpath)
    np.testing.assert_allclose(table.vectors(["GATA1", "KLF1+TP53"]), [VECS["GATA1"], np.add(VECS["KLF1"], VECS["TP53"])])


def test_pt_file_needs_torch(tmp_path):
    fpath = tmp_path / "ESM2_pert_features.pt"
    if importlib.util.find_spec("torch") is None:
        fpath.write_bytes(b"not read")
        with pytest.raises(InputError, match=r"pip install torch==2\.13\.0"):
            load_embedding_file(fpath)
    else:
        import torch

        torch.save({g: torch.tensor(v) for g, v in VECS.items()}, fpath)
        np.testing.assert_allclose(load_embedding_file(fpath).vectors(["TP53"])[0], VECS["TP53"])


def test_bad_embedding_files(tmp_path):
    (tmp_path / "e.csv").write_text("gene,d0\nA,1\nB,x\n")
    with pytest.raises(InputError, match="non-numeric"):
        load_embedding_file(tmp_path / "e.csv")
    with pytest.raises(InputError, match="unsupported"):
        load_embedding_file((tmp_path / "e.txt", (tmp_path / "e.txt").write_text("x"))[0])


def test_esm_missing_weights_is_clear(tmp_path):
    (tmp_path / "p.fa").write_text(">KLF1|iso1\nMAT\nLK\n>KLF1|iso2\nMA\n>TP53\nMEE\n")
    assert read_fasta(tmp_path / "p.fa") == {"KLF1": ["MATLK", "MA"], "TP53": ["MEE"]}
    with pytest.raises(InputError, match="never downloads"):
        make_esm_provider(EsmConfig(weights_fpath=tmp_path / "esm2_t33_650M_UR50D.pt", fasta_fpath=tmp_path / "p.fa"))


def test_guide_kmers(tmp_path):
    np.testing.assert_allclose(kmer_counts(["ACGTA"], 2)[0].reshape(4, 4),
                               np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]) / 4)
    pd.DataFrame({"guide_id": ["g1", "g2", "g3"], "target_gene": ["A", "A", "B"],
                  "sequence": ["AAAA", "CCCC", "ACGT"]}).to_csv(tmp_path / "g.csv", index=False)
    by_guide = make_guide_provider(tmp_path / "g.csv", k=1)
    np.testing.assert_allclose(by_guide.vectors(["g3"])[0], [0.25] * 4)
    by_target = make_guide_provider(tmp_path / "g.csv", k=1, by_target=True)
    np.testing.assert_allclose(by_target.vectors(["A"])[0], [0.5, 0.5, 0, 0])
    pd.DataFrame({"guide_id": ["g1"], "target_gene": ["A"], "sequence": ["AC-T"]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match="g1"):
        make_guide_provider(tmp_path / "b.csv")


def test_modality_tags():
    np.testing.assert_array_equal(modality_ids(["CRISPRi", "crispra", "knockout", "ORF", "compound"]), [0, 1, 2, 3, 4])
    with pytest.raises(InputError, match="base editing"):
        modality_ids(["base editing"])
    np.testing.assert_array_equal(make_modality_provider().vectors(["KO"])[0], [0, 0, 1, 0, 0])


def test_onehot_and_indices():
    vocab = make_vocabulary(["non-targeting", "B", "A+C", "A"])
    assert vocab == ("A", "B", "C")
    np.testing.assert_array_equal(make_onehot_provider(vocab).vectors(["A+C"])[0], [1, 0, 1])
    np.testing.assert_array_equal(label_indices(["C", "A+B", "non-targeting"], vocab), [[2, -1], [0, 1], [-1, -1]])
    with pytest.raises(InputError, match="'D'"):
        label_indices(["D"], vocab)
