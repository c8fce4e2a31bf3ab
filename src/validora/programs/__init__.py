"""Generative programs: sessions, requirements and their grammar, sampling, batch files."""
