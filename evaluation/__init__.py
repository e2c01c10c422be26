"""Comparing checkpoints: per-sample records, paired bootstrap and the report (``report``), and its plots
(``plots``). ``python evaluate.py`` generates and scores the samples through the training reward path."""
