"""Adapters: the only modules that import third-party system libraries."""
