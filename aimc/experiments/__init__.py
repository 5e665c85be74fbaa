"""Experiment recipes (SQuAD drift sweep, ...): thin layers over the library."""
