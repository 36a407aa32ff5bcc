"""Metrics (VCC / cell-eval compatible, report, calibrated), scoring and reports.

- `h5read`: read only X, the perturbation column and the gene names of an .h5ad (anndata as fallback).
- `inputs`: check files, counts vs log1p as cell-eval decides, normalise counts (never in place).
- `stats`: per file, group means/variances and Mann-Whitney p-values vs control.
- `mwu`: the compiled Mann-Whitney U (pdex's definition) over every gene at once, and BH FDR.
- `vcc`: MAE, PDS, DES and the VCC score, identical to cell-eval 0.8.2.
- `report_metrics`, `calibrated`, `bootstrap`: the report's metrics, calibrated metrics, CIs.
- `evaluate`: `evaluate(pred, real, ...)` and the `biojepac evaluate` CLI; `report`: Markdown + PNGs.

Definitions: docs/metrics.md.
"""
