"""Test-session set-up: four simulated CPU devices, so the data-parallel tests can build meshes.

Must run before JAX initialises its backends; every test module imports jax only after this file.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
