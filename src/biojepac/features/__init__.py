"""Perturbation features: label -> vector providers."""
