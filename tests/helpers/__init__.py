"""Shared test helpers: tiny models and generated datasets in real formats."""
