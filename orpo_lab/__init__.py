"""ORPO Lab: Odds Ratio Preference Optimization to learn from and to run."""

__version__ = "0.1.0"
