"""`biojepac convert state-checkpoint` against a real arc-state run folder, without torch.

tests/fixtures/state_run was made once by `benchmarks/peers/make_state_fixture.py` in the arc-state 0.11.1
env: a tiny ST model (2 Llama layers, hidden 32, set length 8, batch encoder on) trained on a seeded screen,
and `state tx infer --tsv --seed 7` on 40 controls of one line (its output, infer_out.h5ad). The converted model,
through `biojepac predict --control-sampling arc-state`, must give the same cells to 1e-4 relative per gene.
"""

import io
import pathlib
import pickle
import sys
import zipfile

import anndata as ad
import numpy as np
import pytest

from biojepac.errors import InputError
from biojepac.models.state import torch_file
from biojepac.models.state.convert import ConvertStateCheckpoint, read_run, run_convert
from biojepac.predict import PredictCommand, run_predict

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "state_run"


def per_gene_rel_diff(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per gene: the largest |ours - theirs| over cells, relative to the largest |theirs| of that gene."""
    return np.abs(ours - theirs).max(0) / np.maximum(np.abs(theirs).max(0), 1e-6)


def test_converted_model_reproduces_state_tx_infer(tmp_path):
    model_dpath = run_convert(ConvertStateCheckpoint(run_dpath=FIXTURE / "run", out=tmp_path / "model"))
    requests = tmp_path / "req.csv"
    tsv = (FIXTURE / "infer_req.tsv").read_text().splitlines()
    requests.write_text("target_gene,n_cells\n" + "\n".join(line.replace("\t", ",") for line in tsv[1:]) + "\n")
    out = run_predict(PredictCommand(model=str(model_dpath), screen=FIXTURE / "infer_in.h5ad", context="lineA",
                                     out=tmp_path / "pred.h5ad", requests=requests, seed=7,
                                     control_sampling="arc-state"))
    pred, state = ad.read_h5ad(out), ad.read_h5ad(FIXTURE / "infer_out.h5ad")
    n_ctrl = ad.read_h5ad(FIXTURE / "infer_in.h5ad").n_obs
    is_pred = (pred.obs["target_gene"] != "non-targeting").to_numpy()
    theirs = np.asarray(state.X)[n_ctrl:]  # state tx infer: the inputs' rows (controls, simulated), then the padded rows
    assert pred.obs["target_gene"].to_numpy()[is_pred].tolist() == state.obs["target_gene"].to_numpy()[n_ctrl:].tolist()
    assert pred.obs["batch"].to_numpy()[is_pred].tolist() == state.obs["batch"].to_numpy()[n_ctrl:].tolist()
    rel = per_gene_rel_diff(pred.X.toarray()[is_pred], theirs)
    assert rel.max() < 1e-4, f"largest per-gene relative difference {rel.max():.2e}"
    assert np.abs(theirs).max() > 0.5  # a real prediction, not all zeros
    assert "torch" not in sys.modules


def test_batch_token_matters_in_the_fixture():
    """The fixture's batch encoder is on, so the test above checks batch handling too."""
    net, meta, _ = read_run(FIXTURE / "run")
    assert meta.config.batch_token and not meta.config.context_token
    assert meta.batches == ("lineA_b1", "lineA_b2", "lineB_b1", "lineB_b2")
    rows = np.asarray(net.batch_emb.weight)
    assert np.allclose(rows[0], rows[1]) and not np.allclose(rows[1], rows[2])  # unknown = arc-state's row 0


def test_torch_reader_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    pickle.dump({"x": Evil()}, buf, protocol=2)
    fpath = tmp_path / "evil.pt"
    with zipfile.ZipFile(fpath, "w") as z:
        z.writestr("evil/data.pkl", buf.getvalue())
    with pytest.raises(InputError, match="print object"):
        torch_file.load(fpath)
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(InputError, match="not a torch zip"):
        torch_file.load(tmp_path / "plain.txt")


def test_not_a_run_folder(tmp_path):
    with pytest.raises(InputError, match="not an arc-state ST run folder"):
        read_run(tmp_path)
