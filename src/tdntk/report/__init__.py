"""Figures and report writers for the experiments (matplotlib without pyplot).

* `plotting`: shared helpers (bands with +-1 std shading, dataset-state markers, PNG + PDF).
* `toy`: the toy chain's figures 1-4, 6, 7, width sweep, and report.md.
"""
