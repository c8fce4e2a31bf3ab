"""Foundations: data, the prompt format, base models, metrics, calibration, plots, files. Imports only errors."""
