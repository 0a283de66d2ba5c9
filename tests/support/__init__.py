"""Helpers the tests share: this session's basics (`session`) and the processes a test owns (`services`)."""
