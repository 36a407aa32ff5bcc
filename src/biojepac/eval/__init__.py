"""Metrics (VCC / cell-eval compatible, report, calibrated), scoring and reports."""
