"""Aggregation of runs into tables, figures and targets (scripts/bench.py and scripts/make_tables.py call it).

methods  the paper's method rows, read from conf/method/ (their one definition)
stats    mean / std per cell, the paired MimiQ − best-baseline t-interval, spreads, set quality
mini     the mini benchmark's markdown and CSV (results/mini/), targets (its README's target table)
figures  accuracy against bit width; attention: inter-head similarity and attention maps of synthetic sets
tables   the paper tables as data; paper: runs -> cells joined with results/paper/*.csv -> CSV / markdown, commands
"""
