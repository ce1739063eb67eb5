"""`make demo`: a short end-to-end run of every part of the library, printing one results table.

Each section is a module `benchmarks.demo_*` with `run(out_dir) -> [(quantity, value), ...]`.
Outputs (checkpoints, metrics, pictures) go under ``--out`` (default ``demo_out/``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import time

from common.cli import add_compile_arguments, configure_compiles, non_negative_int

SECTIONS = [
    ("Foundation: data-parallel loop and monomial group on a trained MLP", "benchmarks.demo_foundation"),
    ("MAGEP-NFN: CNN zoo on digits and accuracy prediction from weights", "benchmarks.demo_magep"),
    ("Transformer-NFN: attention symmetry group, the accuracy predictor, a tiny zoo study", "benchmarks.demo_tnfn"),
    ("TSW-SL: references, gradient flows, colour transfer, generator (--quick)", "benchmarks.demo_tsw"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="folder for run directories and pictures")
    parser.add_argument("--cpu-devices", type=non_negative_int, default=4,
                        help="simulated CPU devices for the data-parallel sections (0: leave JAX's default)")
    add_compile_arguments(parser)
    args = parser.parse_args(argv)
    configure_compiles(args)
    if args.cpu_devices:
        import jax

        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    os.makedirs(args.out, exist_ok=True)
    table = []
    for title, module in SECTIONS:
        start = time.perf_counter()
        rows = importlib.import_module(module).run(os.path.join(args.out, module.rsplit("_", 1)[-1]))
        table.append((title, rows, time.perf_counter() - start))
    width = max(len(q) for _, rows, _ in table for q, _ in rows)
    print()
    for title, rows, seconds in table:
        print(f"== {title} ({seconds:.1f} s)")
        for quantity, value in rows:
            print(f"  {quantity:<{width}}  {value}")
    print(f"\nOutputs under {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
