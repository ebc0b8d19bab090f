"""Aggregation of runs into tables, figures and targets (scripts/bench.py and scripts/make_tables.py are their
command lines).

methods  the registry as data: method rows of conf/method/ (label, colour, role, order, bench and table rows) and
         generator facts of conf/generator/
bench    the mini benchmark: cell grid, worker shards, runs and their read-back, teacher gates, attention analysis
stats    mean / std per cell, the paired ours − best-baseline t-interval, spreads, set quality
targets  the mini task's targets and teacher gate, numbers from conf/targets/
mini     the mini benchmark's outputs (results/mini/): render them from the records, read the records back
figures  accuracy against bit width; attention: inter-head similarity and attention maps of synthetic sets
tables   the paper tables as data; paper: runs -> cells joined with results/paper/*.csv -> CSV / markdown, commands
"""
