"""Baselines, the BioJEPAC world model, and the STATE state-transition model."""
