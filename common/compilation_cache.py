"""JAX's persistent compilation cache for the command lines: a rerun or a resumed job skips the compiles it has
done before (compiled programs are read back from disk instead of built again).

Every command line of the library and of the experiment drivers calls `add_arguments` on its parser and
`configure` on its parsed arguments: the cache is on by default in ``$JAX_COMPILATION_CACHE_DIR`` or
``~/.cache/nfn_tsw/jax``; ``--compilation-cache-dir DIR`` moves it, ``--no-compilation-cache`` turns it off.
The speed benchmarks run under `disabled`: the first call's compile time is one of their measurements, so
it must not be a read from the cache (even when ``$JAX_COMPILATION_CACHE_DIR`` is set).
"""
from __future__ import annotations

import argparse
import contextlib
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

__all__ = ["DEFAULT_DIR", "MIN_COMPILE_SECONDS", "enable", "disabled", "add_arguments", "configure"]

DEFAULT_DIR = os.path.join("~", ".cache", "nfn_tsw", "jax")
MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a file


def enable(path: str | os.PathLike | None = None, min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str:
    """Turn on the persistent compilation cache in ``path`` (default ``$JAX_COMPILATION_CACHE_DIR`` or
    `DEFAULT_DIR`) for programs that take at least ``min_compile_seconds`` to compile. Call before the first
    compile. A cache configured already (e.g. by the test session) is kept as it is. Returns the folder."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    # JAX reads $JAX_COMPILATION_CACHE_DIR into its config at import, so a set variable returned above
    folder = os.path.expanduser(os.fspath(path or DEFAULT_DIR))
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-compilation-cache`` and ``--compilation-cache-dir DIR`` to ``parser``."""
    group = parser.add_argument_group("compilation cache")
    group.add_argument("--no-compilation-cache", dest="compilation_cache", action="store_false",
                       help="compile everything afresh (default: reuse JAX's persistent compilation cache)")
    group.add_argument("--compilation-cache-dir", default=None, metavar="DIR",
                       help=f"cache folder (default $JAX_COMPILATION_CACHE_DIR or {DEFAULT_DIR})")


def configure(args: argparse.Namespace) -> str | None:
    """Enable the cache as ``args`` (from a parser given `add_arguments`) say; returns its folder or None."""
    return enable(args.compilation_cache_dir) if args.compilation_cache else None


@contextlib.contextmanager
def disabled():
    """Within the block, every program is compiled afresh and nothing is written to the cache; the previous
    setting is restored afterwards."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()  # JAX decides once per process whether to use the cache; make it look again
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        jax_cache.reset_cache()
