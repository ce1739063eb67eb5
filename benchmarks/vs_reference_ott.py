"""One job of ``benchmarks.vs_reference`` on OTT-JAX's sliced Wasserstein, in its own process (a Python with
jax and ott-jax; the project's when it has ott).

    OTT_PY -m benchmarks.vs_reference_ott --job ott --n 1000 --d 100 --trees 25 --lines 4 --mode fwdbwd

``ott.tools.sliced.sliced_wasserstein`` with its default squared-Euclidean cost (the mean of the 1-D W_2^2; the
square root is taken, as POT's SW_2), L k projections drawn once and applied through ``proj_fn``; the points and
projections are jit arguments. ``fwd``: the jitted distance; ``fwdbwd``: jitted value and gradient w.r.t. Y.
"""
from __future__ import annotations

from benchmarks import vs_reference_protocol as protocol


def build(args):
    """(call, info) of the job."""
    import jax
    import jax.numpy as jnp
    import ott
    from ott.tools import sliced

    if args.p != 2:
        raise ValueError(f"OTT-JAX's sliced_wasserstein measures p = 2 (squared Euclidean cost), got p={args.p}")
    projections = args.trees * args.lines
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (args.n, args.d))
    y = jax.random.normal(k2, (args.n, args.d)) + 0.5
    directions = jax.random.normal(k3, (projections, args.d))
    directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)

    def distance(x, y, directions):
        value, _ = sliced.sliced_wasserstein(x, y, proj_fn=lambda z: z @ directions.T)
        return jnp.sqrt(value)

    if args.mode == "fwd":
        fwd = jax.jit(distance)
        call = lambda: fwd(x, y, directions).block_until_ready()  # noqa: E731
    else:
        grad = jax.jit(jax.value_and_grad(distance, argnums=1))

        def call():
            value, g = grad(x, y, directions)
            g.block_until_ready()
            return value

    return call, dict(config=f"ott.tools.sliced.sliced_wasserstein, {projections} projections, sqrt of the "
                             "squared-Euclidean mean, jax.jit", ott=ott.__version__, jax=jax.__version__)


def main(argv=None) -> dict:
    args = protocol.job_arguments(__doc__.splitlines()[0], ("ott",), argv)
    return protocol.measure(protocol.base_record(args), lambda: build(args), args.repeats)


if __name__ == "__main__":
    main()
