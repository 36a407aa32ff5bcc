"""Loading, validation, normalisation, splits, control pairing, synthetic screens and dataset recipes."""
