"""Shared pytest configuration for the compatopt suite.

Deliberately empty of global state: nothing here enables ``jax_enable_x64`` or changes
dtypes; tests that need float64 use ``with jax.enable_x64(True):`` locally.
"""
