"""BioJEPAC: a linear-attention cell encoder pretrained as a JEPA with an EMA teacher, an action composer
for perturbations, an action-conditioned latent predictor and a light expression decoder.

Top-down: `config.py` (every size, with presets) -> `model.py` (`BioJepacModel`, `fit_biojepac`) ->
the stage losses in `stages.py` -> the modules (`encoder`, `jepa_predictor`, `composer`,
`action_predictor`, `decoder`) built from `attention.py`, `masks.py` and `losses.py`.
"""
