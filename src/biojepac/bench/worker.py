"""One (model, task) prediction in its own process, so train time and peak memory are that model's alone.

    python -m biojepac.bench.worker SPEC_JSON

SPEC_JSON names the model, the task, the seed and where to write; the worker fits the model on the
task's training cells, predicts every test item from that context's real controls (through
`biojepac.predict.predict_cells`, as `biojepac predict` does) and writes the prediction plus a JSON of
timings. External peers (STATE, GEARS) are run by `biojepac.bench.peers` instead.
"""

import json
import pathlib
import sys
import time

import anndata as ad

from biojepac.bench import tasks as tasklib
from biojepac.data import schema
from biojepac.io import write_h5ad_atomic, write_text_atomic

def make_model(name: str, task: tasklib.Task, spec: dict):
    """A fresh, unfitted model for `name` on `task` and its config for the DB (`models.registry.build`)."""
    from biojepac.models import registry

    preset = spec.get("state_preset", "cpu-small") if name.startswith("state") else spec.get("biojepac_preset", "tiny")
    # features=None: every model's own default (`features.DEFAULT_FEATURES`), as `biojepac predict` and
    # `biojepac train` give a user; `task.features` is what the external peers read from the task folder.
    return registry.build(name, features=None, preset=preset, seed=spec["seed"], fallback="cell-mean",
                          run_dpath=pathlib.Path(spec["work_dpath"]) / "run", steps_scale=spec.get("steps_scale", 1.0))


def run(spec: dict) -> dict:
    from biojepac.predict import predict_cells

    task = tasklib.get_task(spec["task"], pathlib.Path(spec["data_dpath"]), seed=spec["seed"],
                            cache_dpath=pathlib.Path(spec["cache_dpath"]))
    masks = tasklib.fold_masks(task)
    train = task.adata[masks["train"]].copy()
    pathlib.Path(spec["work_dpath"]).mkdir(parents=True, exist_ok=True)
    model, cfg = make_model(spec["model"], task, spec)
    t0 = time.perf_counter()
    model.fit(train)
    train_s = time.perf_counter() - t0
    req = tasklib.requests(task)
    t0 = time.perf_counter()
    parts = [predict_cells(model, train, r[["target_gene", "n_cells"]].reset_index(drop=True), ctx, spec["seed"])
             for ctx, r in req.groupby("context")]
    pred = ad.concat(parts) if len(parts) > 1 else parts[0]
    predict_s = time.perf_counter() - t0
    pred.obs_names_make_unique()
    pred.uns = {}
    out_fpath = pathlib.Path(spec["out_fpath"])
    write_h5ad_atomic(pred, out_fpath)
    return {"train_s": train_s, "predict_s": predict_s, "config": cfg,
            "n_pred_cells": int((pred.obs[schema.PERT_COL] != schema.CONTROL).sum())}


if __name__ == "__main__":
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    info = run(spec)
    write_text_atomic(spec["info_fpath"], json.dumps(info, default=str))
