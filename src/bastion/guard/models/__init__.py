"""Data files of the guard's learned scanners (weights and model cards); no code."""
