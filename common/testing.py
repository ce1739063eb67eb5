"""Two-sided symmetry checks reused by every package's tests.

`assert_equivariant` checks that ``fn(act(g, x)) == act(g, fn(x))`` for random group elements g AND that a
broken action (a permutation applied to the outputs of one hidden layer only, not to the inputs of the
next layer; optionally a scaling of the wrong group) does NOT commute with fn, so a vacuous layer (one that
never mixes layers, or ignores its input) cannot pass. `assert_invariant` does the same for
``fn(act(g, x)) == fn(x)``. `assert_symmetry` is the generic core for any group (e.g. the transformer group).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import groups
from common.weight_space import NetworkSpec, WeightSpace


def uncoupled_permutation(key: jax.Array, ws: WeightSpace, layer: int) -> WeightSpace:
    """Permute the output neurons (rows and bias) of hidden layer `layer` (1..L-1) but not the inputs
    (columns) of layer `layer`+1: a broken action that changes the network's function.

    Args:
      key: PRNG key.
      ws: raw weights or features.
      layer: hidden layer index l in 1..L-1.
    """
    if not 1 <= layer < ws.num_layers:
        raise ValueError(f"uncoupled_permutation: layer must be in 1..{ws.num_layers - 1}, got {layer}")
    a = ws.out_axis(layer - 1)
    n = ws.weights[layer - 1].shape[a]
    perm = jnp.roll(jnp.arange(n), 1 + int(jax.random.randint(key, (), 0, max(n - 1, 1))))
    weights, biases = list(ws.weights), list(ws.biases)
    weights[layer - 1] = jnp.take(weights[layer - 1], perm, axis=a)
    biases[layer - 1] = jnp.take(biases[layer - 1], perm, axis=a)
    return WeightSpace(tuple(weights), tuple(biases), is_features=ws.is_features)


def _max_rel_diff(a: Any, b: Any) -> float:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    scale = max(float(np.max(np.abs(np.asarray(x)))) for x in la + lb) + 1e-12
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb)) / scale


def _assert_close(a: Any, b: Any, rtol: float, atol: float, what: str) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=what)


def assert_symmetry(
    fn: Callable,
    key: jax.Array,
    x: Any,
    sample: Callable[[jax.Array], Any],
    act_in: Callable[[Any, Any], Any],
    act_out: Callable[[Any, Any], Any] | None,
    broken: Sequence[tuple[str, Callable[[Any], Any], Callable[[Any], Any] | None]],
    *,
    n_trials: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    min_change: float = 1e-3,
) -> None:
    """Generic two-sided check for any group (used by the monomial and the transformer groups).

    Args:
      fn: the function under test, x -> pytree.
      key: PRNG key.
      x: input pytree.
      sample: key -> group element.
      act_in: (g, x) -> g.x on inputs.
      act_out: (g, y) -> g.y on outputs for an equivariant fn; None for an invariant fn.
      broken: (name, move_in, move_out) triples of actions fn must NOT respect: fn(move_in(x)) must
        differ from move_out(fn(x)) (from fn(x) when move_out is None) by more than `min_change`
        relative to the output's scale.
    Raises:
      AssertionError if a coupled action fails or a broken action commutes with fn.
    """
    out = fn(x)
    for t, k in enumerate(jax.random.split(key, n_trials)):
        g = sample(k)
        expected = out if act_out is None else act_out(g, out)
        _assert_close(fn(act_in(g, x)), expected, rtol, atol, f"trial {t}: coupled action")
    for name, move_in, move_out in broken:
        change = _max_rel_diff(fn(move_in(x)), out if move_out is None else move_out(out))
        if change <= min_change:
            raise AssertionError(
                f"broken action ({name}) commuted with fn (relative change {change:.2e} <= {min_change:.1e}): "
                "fn does not see the coupling the group requires, so the symmetry check is vacuous"
            )


def _monomial_check(
    fn: Callable,
    key: jax.Array,
    feats: WeightSpace,
    spec: NetworkSpec,
    scaling: str,
    equivariant: bool,
    broken_scaling: str | None,
    scale_range: tuple[float, float],
    check_uncoupled: bool,
    **tolerances,
) -> None:
    """Monomial group: coupled actions of `scaling`; broken = uncoupled permutations (+ a wrong scaling)."""
    if spec.num_layers < 2:
        raise ValueError(f"symmetry checks need a hidden layer; spec has widths {spec.widths}")
    feats.check_spec(spec, "feats")
    k_group, k_broken, k_wrong = jax.random.split(key, 3)
    moves = [
        (f"uncoupled permutation of hidden layer {l}", lambda ws, l=l: uncoupled_permutation(jax.random.fold_in(k_broken, l), ws, l))
        for l in range(1, spec.num_layers)
    ] if check_uncoupled else []
    if broken_scaling is not None:
        g_wrong = groups.sample_monomial(k_wrong, spec, broken_scaling, scale_range=scale_range)
        moves.append((f"{broken_scaling} action", lambda ws: groups.act(g_wrong, ws)))
    assert_symmetry(
        fn,
        k_group,
        feats,
        lambda k: groups.sample_monomial(k, spec, scaling, scale_range=scale_range),
        groups.act,
        groups.act if equivariant else None,
        [(name, move, move if equivariant else None) for name, move in moves],
        **tolerances,
    )


_DOC_ARGS = """
    Args:
      fn: features -> features of the same spec (equivariant; any channel counts) or -> any pytree (invariant).
      key: PRNG key for the group elements.
      feats: input features (any leading batch axes) of `spec`.
      spec: the network spec of `feats`.
      scaling: the group: "positive", "sign" or "none".
      n_trials: number of random coupled group elements.
      rtol, atol: tolerances of the coupled check.
      min_change: smallest relative change each broken action must cause.
      broken_scaling: optionally a group fn must NOT respect (e.g. "sign" for a ReLU-based layer).
      scale_range: range of positive scalings.
      check_uncoupled: include the uncoupled permutations among the broken actions (turn off only for layers
        that provably cannot see them, e.g. Monomial-NFN's linear layers, and say why in the test).
    Raises:
      AssertionError on either failure.
"""


def _monomial_assert(equivariant: bool, summary: str) -> Callable[..., None]:
    def check(
        fn: Callable[[WeightSpace], Any],
        key: jax.Array,
        feats: WeightSpace,
        spec: NetworkSpec,
        scaling: str = "positive",
        *,
        n_trials: int = 3,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        min_change: float = 1e-3,
        broken_scaling: str | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        check_uncoupled: bool = True,
    ) -> None:
        _monomial_check(fn, key, feats, spec, scaling, equivariant, broken_scaling, scale_range, check_uncoupled,
                        n_trials=n_trials, rtol=rtol, atol=atol, min_change=min_change)

    check.__doc__ = summary + "\n" + _DOC_ARGS
    return check


assert_equivariant = _monomial_assert(True, "Assert fn(g.x) == g.fn(x) for random g, and that broken actions do not commute with fn.")
assert_equivariant.__name__ = assert_equivariant.__qualname__ = "assert_equivariant"
assert_invariant = _monomial_assert(False, "Assert fn(g.x) == fn(x) for random g, and that broken actions change fn's output.")
assert_invariant.__name__ = assert_invariant.__qualname__ = "assert_invariant"
