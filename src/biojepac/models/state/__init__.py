"""The state-transition (ST) model in the spirit of STATE (Adduri et al. 2025).

Top-down: `model.py` (`StateModel`: fit / predict / save / load, and `biojepac train state`) ->
`trainer.py` (cell sentences, the energy loss, presets) -> `network.py` (the transformer over a cell set)
and `latent.py` (BioJEPAC's encoder as the cell embedding, STATE's SE role).
"""
