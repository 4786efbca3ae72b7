"""Benchmarks (`make bench`): numbers for the notes, not pass/fail tests."""
