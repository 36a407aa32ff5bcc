"""`biojepac predict --control-sampling arc-state`: the cell sentences `state tx infer --tsv` forms, drawn alike.

`state tx infer` (arc-state 0.11.1) on an AnnData of one context's controls plus a TSV of `perturbation,
num_cells` does this, all with NumPy's legacy `RandomState(seed)`:

1. padding: for each TSV row in file order, `num_cells` control rows are drawn with replacement (one
   RandomState(seed)) and copied as new rows labelled with the perturbation; a copy keeps the control's batch;
2. simulation (a fresh RandomState(seed)): for every label in sorted order (the control label included: its rows
   are simulated too, and consume draws), that label's rows in order are cut into windows of `cell_set_len`
   (the last one shorter); each window's basal cells are drawn with replacement from the context's controls,
   and one forward pass predicts the window (every token: that label's vector, its row's batch).

`arc_state_cells` repeats exactly these draws and hands each label's basal cells and batches to
`StateModel.predict(windows="as-given")`, so a converted arc-state model predicts the same cells
`state tx infer` wrote, and any ST model can be compared with STATE on identical inputs. It assumes the
screen's controls of `context` are what `state tx infer` was given (as `benchmarks/peers/state_peer.py` runs it).
"""

import numpy as np
import pandas as pd

from biojepac.errors import InputError


def arc_state_cells(model, x_ctrl_ng: np.ndarray, ctrl_batches: np.ndarray, perts: pd.DataFrame, context: str,
                    seed: int, control: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per requested perturbation (in `perts` order): its predicted cells and the index of each one's padded
    control row (whose batch it carries). `x_ctrl_ng`: the context's controls in file order."""
    if not hasattr(model, "predict_windows"):
        raise InputError(f"--control-sampling arc-state: model {getattr(model, 'name', model)!r} is not a cell-set "
                         "(state) model; arc-state's sentences mean nothing to it")
    n_ctrl = len(x_ctrl_ng)
    pad_rng = np.random.RandomState(seed)
    pad_rows = [pad_rng.choice(n_ctrl, size=int(n), replace=True) for n in perts["n_cells"]]
    labels = [str(p) for p in perts["target_gene"]]
    sim_rng = np.random.RandomState(seed)
    set_size = model.cfg.set_size
    basal_by_label: dict[str, np.ndarray] = {}
    for label in sorted({control, *labels}):
        n_rows = n_ctrl if label == control else len(pad_rows[labels.index(label)])
        draws = [sim_rng.choice(n_ctrl, size=min(set_size, n_rows - start), replace=True)
                 for start in range(0, n_rows, set_size)]
        basal_by_label[label] = np.concatenate(draws) if draws else np.zeros(0, int)
    preds = []
    for label, rows in zip(labels, pad_rows):
        basal = basal_by_label[label]
        preds.append(model.predict_windows(x_ctrl_ng[basal], label, context, ctrl_batches[rows]))
    return preds, pad_rows
