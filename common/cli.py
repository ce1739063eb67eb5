"""argparse helpers for the command lines: numeric arguments checked when parsed (docs/input_policy.md), and the
compile options every command line takes.

A bad value makes argparse exit with ``error: argument --models: must be an int >= 1; got '0'`` instead of
failing later (an empty zoo, a division by zero) or silently falling back to a default.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "positive_int_or_all", "non_negative_int", "positive_float", "add_compile_arguments",
           "configure_compiles"]


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= {minimum}; got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an int >= {minimum}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (counts: models, steps, runs, batch and shard sizes)."""
    return _int_at_least(text, 1)


def positive_int_or_all(text: str) -> int | None:
    """argparse type: an int >= 1, or "all" (None: no limit, every row or every model)."""
    return None if text == "all" else positive_int(text)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (seeds, offsets)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the compile options of every command line to ``parser``: JAX's persistent compilation cache
    (`common.compilation_cache.add_arguments`) and LLVM's loop unrolling (`common.llvm_options.add_arguments`)."""
    from common import compilation_cache, llvm_options

    compilation_cache.add_arguments(parser)
    llvm_options.add_arguments(parser)


def configure_compiles(args: argparse.Namespace) -> None:
    """Apply the options of `add_compile_arguments` (``args`` from such a parser), before the first computation:
    the compilation cache (`compilation_cache.configure`), then the LLVM options (`llvm_options.configure`)."""
    from common import compilation_cache, llvm_options

    compilation_cache.configure(args)
    llvm_options.configure(args)
