"""BioJEPAC: predict single-cell responses to genetic perturbations, and score them honestly."""

__version__ = "0.1.0"
