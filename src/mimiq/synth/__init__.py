"""Synthetic-data generation: MimiQ inter-head attention alignment and the baseline generators."""
