"""Metrics (VCC / cell-eval compatible, report, calibrated), scoring and reports.

- `inputs`: read and check files (counts vs log1p as cell-eval decides; never in place), gene blocks.
- `stats`: one streaming pass per file: group means/variances and Mann-Whitney p-values vs control.
- `mwu`: the vectorised Mann-Whitney U (pdex's definition) and BH FDR.
- `vcc`: MAE, PDS, DES and the VCC score, identical to cell-eval 0.8.2.
- `report_metrics`, `calibrated`, `bootstrap`: the report's metrics, calibrated metrics, CIs.
- `evaluate`: `evaluate(pred, real, ...)` and the `biojepac evaluate` CLI; `report`: Markdown + PNGs.

Definitions: docs/metrics.md.
"""
