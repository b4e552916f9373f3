"""Helpers for the sweep tests (tests/test_tune*.py)."""
