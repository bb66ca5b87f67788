"""Data: cohort readers, the synthetic benchmark, low-dose CT simulation, datasets.

Kept free of imports so generator worker processes stay light.
"""
