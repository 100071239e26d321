"""Reporting: the harness's own per-run measurements, plots and the HTML page, run comparison,
and the QPS calibration and peak search (each probe a LoadGen test in its own process)."""
