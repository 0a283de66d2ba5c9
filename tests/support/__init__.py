"""Helpers the tests share, by kind (tests/README.md lists them); tests/conftest.py turns them into fixtures."""
