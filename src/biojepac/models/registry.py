"""Every model by one name: `build` a fresh one, `load` a saved one.

The CLI (`predict`, `train`), the demo and the bench all go through here, so a model named in one
is the same model in the others.

| name            | model                                                             |
|-----------------|-------------------------------------------------------------------|
| a baseline kind | `baselines.MODELS` (control-mean, cell-mean, linear, ...)          |
| `state`         | our state-transition model (`models/state/`), energy loss         |
| `state-pb`      | the same with the pseudobulk MSE added (weight 1)                 |
| `biojepac`      | the BioJEPAC world model (`models/jepa/`)                         |

Neural models share one set of preset names, `PRESETS`, and one steps override, `steps_scale`.
Loading dispatches on `model.json`'s `kind` through the fixed table in `load`: a model folder can
never name code to run.
"""

import dataclasses
import pathlib
import zipfile
from typing import Literal

from biojepac.errors import InputError
from biojepac.models.base import PRESETS, Preset, scale_steps
from biojepac.models.saved import read_meta

NEURAL = ("state", "state-pb", "biojepac")


def baseline_kinds() -> tuple[str, ...]:
    from biojepac.models.baselines import MODELS

    return tuple(MODELS)


def names() -> tuple[str, ...]:
    return (*baseline_kinds(), *NEURAL)


def build(name: str, *, features=None, preset: Preset = "cpu-small", run_dpath: pathlib.Path | None = None,
          seed: int = 0, steps_scale: float = 1.0, fallback: Literal["error", "cell-mean"] = "error",
          progress: bool = False):
    """A fresh, unfitted model and its config (for provenance).

    `features`: a feature spec string or provider (None: the model's default); `fallback`: baselines only,
    what a perturbation without features gets; `run_dpath`: neural models' checkpoints (None: temporary)."""
    if name in baseline_kinds():
        from biojepac.models.baselines import MODELS, BaselineConfig

        spec = features if isinstance(features, str) else BaselineConfig.features
        bcfg = BaselineConfig(features=spec, feature_fallback=fallback, combo_fallback=fallback)
        provider = None if features is None or isinstance(features, str) else features
        return MODELS[name](bcfg, provider), {"kind": name, "config": dataclasses.asdict(bcfg), **_features_record(features)}
    state_only = ("state_sm", "state", "state_lg")  # arc-state's ST sizes, for the state model only
    if preset not in PRESETS and not (name in ("state", "state-pb") and preset in state_only):
        raise InputError(f"preset {preset!r}: expected one of {list(PRESETS)}"
                         + (f" (the state model also takes {list(state_only)})" if preset in state_only else ""))
    if name in ("state", "state-pb"):
        from biojepac.models.state.model import StateModel
        from biojepac.models.state.trainer import PRESETS as STATE_PRESETS

        model_cfg, fit_cfg = STATE_PRESETS[preset]
        model_cfg = dataclasses.replace(model_cfg, pseudobulk_weight=1.0 if name == "state-pb" else 0.0)
        fit_cfg = dataclasses.replace(fit_cfg, n_steps=scale_steps(fit_cfg.n_steps, steps_scale), seed=seed,
                                      run_dpath=run_dpath, progress=progress)
        cfg = {"kind": name, "preset": preset, "model": dataclasses.asdict(model_cfg), "fit": dataclasses.asdict(fit_cfg)}
        return StateModel(model_cfg, features, fit_cfg), {**cfg, **_features_record(features)}
    if name == "biojepac":
        from biojepac.models.jepa.config import get_preset
        from biojepac.models.jepa.model import BioJepacModel

        bcfg = dataclasses.replace(get_preset(preset), seed=seed)
        cfg = {"kind": name, "preset": preset, "steps_scale": steps_scale, "config": dataclasses.asdict(bcfg)}
        return BioJepacModel(bcfg, features, run_dpath, steps_scale), {**cfg, **_features_record(features)}
    raise InputError(f"model {name!r}: expected one of {list(names())}")


def load(dpath: pathlib.Path):
    """Any saved model folder, rebuilt by the loader of its `model.json` kind. A folder its loader cannot
    read (missing or truncated weights, a config of another version) is an `InputError` naming it."""
    meta = read_meta(dpath)
    try:
        return _load_kind(pathlib.Path(dpath), meta)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as err:
        files = sorted(p.name for p in pathlib.Path(dpath).iterdir() if p.name != "model.json")
        raise InputError(f"{dpath}: its weights ({', '.join(files) or 'none'}) cannot be loaded as a {meta['kind']!r} model "
                         f"({type(err).__name__}: {err}); save it again with this version") from None


def _load_kind(dpath: pathlib.Path, meta: dict):
    kind = meta["kind"]
    if kind in baseline_kinds():
        from biojepac.models.baselines import load as load_baseline

        return load_baseline(pathlib.Path(dpath), meta)
    if kind in ("state", "state-pb"):
        from biojepac.models.state.model import load as load_state

        return load_state(pathlib.Path(dpath), meta)
    if kind == "biojepac":
        from biojepac.models.jepa.model import BioJepacModel

        return BioJepacModel.load(pathlib.Path(dpath), meta)
    raise InputError(f"{dpath}/model.json: unknown model kind {kind!r}; known: {list(names())}")


def _features_record(features) -> dict:
    if features is None:
        return {"features": "default"}
    if isinstance(features, str):
        return {"features": features}
    return {"features": getattr(features, "name", type(features).__name__)}
