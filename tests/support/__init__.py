"""Helpers for test modules (plain modules, no fixtures)."""
