"""Speed of the real steps: the functions the loops call, timed side by side (`scripts/speed.py`).

steps    callables that run one step through the functions the stages' loops call (`mimiq_step`,
         `psaq_step`, `psaq_v2_step`, `qat_step`), and the baselines of the ratios (the teacher's bare
         forward + backward, FP passes, FP fine-tuning)
timing   interleaved timing with device sync and a separately reported first call (the compile warm-up);
         profiler tables
suite    the measurements of the report: step ratios eager vs compiled, precision, threads, bits sweep,
         the cost of a converged set
report   results/mini/speed.md from the measurements, every ratio against its target
"""
