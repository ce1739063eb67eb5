"""LLVM options for XLA's CPU code generation, set once per process: first compiles 10-50% shorter.

XLA compiles the fused loops of every program to machine code with LLVM, and on a small CPU that is most of a
first call (docs/common.md §11). LLVM's loop unroller is a large share of it: with ``-unroll-threshold=0`` (no
loop unrolled; the vectoriser still interleaves its vector loops) the NFN predictors' training steps compiled
0.1-0.9 s sooner (MAGEP-NFN at batch 64 2.99-3.56 -> 2.36-2.83 s, Transformer-NFN at batch 64 1.69-1.70 ->
0.86-1.01 s) and ran as fast within the host's noise (NP at batch 256 1-18% slower in each of eight rounds), with
the same numbers up to float32 rounding (docs/common.md §11).

XLA reads LLVM options from ``XLA_FLAGS`` (``--xla_backend_extra_options``) once, when JAX creates its backends
at the first computation, and takes them from nowhere else (`jax.jit`'s ``compiler_options`` cannot carry
them). So this is a setting of the whole process, made first thing by the program that owns it: every command
line of the library and the benchmark processes call it (``--llvm-unroll`` keeps LLVM's default); a script of
your own calls `set_options()` before its first JAX computation. Only on a CPU-only installation: with an
accelerator plugin installed the options would also reach the accelerator's LLVM back end, so nothing is set.

Example::

    from common import llvm_options
    llvm_options.set_options()  # first thing, before any JAX computation
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os

__all__ = ["FAST_COMPILE", "set_options", "add_arguments", "configure"]

FAST_COMPILE = ("-unroll-threshold=0",)
_FLAG = "--xla_backend_extra_options"


def set_options(options: tuple[str, ...] = FAST_COMPILE) -> bool:
    """Add ``options`` (LLVM command-line options, e.g. ``"-unroll-threshold=0"``) to ``XLA_FLAGS`` as
    ``--xla_backend_extra_options``. Returns True when set; False, setting nothing, when JAX has created its
    backends already (XLA has read ``XLA_FLAGS``), when ``XLA_FLAGS`` names ``--xla_backend_extra_options``
    itself (the user's choice stays), or when an accelerator plugin is installed and ``JAX_PLATFORMS`` does not
    restrict JAX to the CPU."""
    from jax._src import xla_bridge  # no public API says whether the backends exist yet

    flags = os.environ.get("XLA_FLAGS", "")
    if not options or xla_bridge.backends_are_initialized() or _FLAG in flags or not _cpu_only():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={','.join(options)}".strip()
    return True


def _cpu_only() -> bool:
    """Whether JAX can only run on the CPU here: JAX_PLATFORMS is "cpu", or no PJRT plugin (CUDA, ROCm, TPU)
    is installed."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    plugins = importlib.metadata.entry_points(group="jax_plugins")
    return not plugins and all(importlib.util.find_spec(name) is None for name in ("jax_plugins", "libtpu"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--llvm-unroll`` (keep LLVM's default loop unrolling) to ``parser``."""
    parser.add_argument("--llvm-unroll", action="store_true",
                        help="keep LLVM's loop unrolling in XLA's CPU compiles (default: off, compiles are shorter)")


def configure(args: argparse.Namespace) -> bool:
    """`set_options` unless ``args.llvm_unroll`` (from a parser given `add_arguments`); returns whether set."""
    return False if args.llvm_unroll else set_options()
