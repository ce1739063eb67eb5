"""Two-sided symmetry checks for any `common.groups.Group` (the monomial group, the transformer group, ...).

`assert_equivariant(fn, group, key, x)` checks that ``fn(g.x) == g.fn(x)`` for random elements g of `group`
AND that every broken action b (the group's uncoupled actions, plus any `broken` ones: another group's
coupled action, a permutation of fixed neurons, ...) does NOT commute with fn: ``fn(b(x)) != b(fn(x))``.
So a vacuous function (one that never mixes the fields a group couples, or ignores its input) cannot pass.
`assert_invariant` does the same for ``fn(g.x) == fn(x)`` and ``fn(b(x)) != fn(x)``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from common.groups import BrokenAction, Group


def _leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
    return [(jax.tree_util.keystr(path) or "output", np.asarray(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _paired(got: Any, want: Any, what: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    a, b = _leaves(got), _leaves(want)
    if [p for p, _ in a] != [p for p, _ in b] or any(x.shape != y.shape for (_, x), (_, y) in zip(a, b)):
        raise AssertionError(f"{what}: outputs have different structures: {[(p, x.shape) for p, x in a]} "
                             f"vs {[(p, y.shape) for p, y in b]}")
    return [(p, x, y) for (p, x), (_, y) in zip(a, b)]


def _assert_close(got: Any, want: Any, rtol: float, atol: float, what: str) -> None:
    """Every leaf within ``atol + rtol |want|`` (numpy's allclose); else name the worst field."""
    pairs = _paired(got, want, what)
    excess = [float(np.max(np.abs(x - y) - (atol + rtol * np.abs(y)), initial=-np.inf)) for _, x, y in pairs]
    failing = [i for i, e in enumerate(excess) if not e <= 0]  # NaN fails too
    if failing:
        worst = max(failing, key=lambda i: np.nan_to_num(excess[i], nan=np.inf))
        path, x, y = pairs[worst]
        raise AssertionError(
            f"{what}: field {path} differs by max abs {float(np.max(np.abs(x - y))):.3e} (|expected| up to "
            f"{float(np.max(np.abs(y), initial=0.0)):.3e}; rtol={rtol:.0e}, atol={atol:.0e}); "
            f"{len(failing)} of {len(pairs)} fields fail: {[pairs[i][0] for i in failing]}"
        )


def _largest_change(a: Any, b: Any, what: str) -> tuple[float, float, str]:
    """(max abs difference, that / the largest |value| of a and b, the field where it occurs)."""
    pairs = _paired(a, b, what)
    diffs = [float(np.max(np.abs(x - y), initial=0.0)) for _, x, y in pairs]
    scale = max(float(np.max(np.abs(v), initial=0.0)) for _, x, y in pairs for v in (x, y)) + 1e-12
    i = int(np.argmax(diffs))
    return diffs[i], diffs[i] / scale, pairs[i][0]


def _broken_actions(group: Group, key: jax.Array, broken: Sequence[Group | BrokenAction], check_uncoupled: bool,
                    n_trials: int) -> list[tuple[str, list[Callable[[Any], Any]]]]:
    """(name, moves) per broken action: the group's uncoupled actions (if `check_uncoupled`) and `broken`; a
    Group there stands for its coupled action with `n_trials` random elements (fn must change under one)."""
    k_uncoupled, k_broken = jax.random.split(key)
    actions = list(group.uncoupled_actions(k_uncoupled)) if check_uncoupled else []
    moves = [(a.name, [a.move]) for a in actions]
    for i, b in enumerate(broken):
        if isinstance(b, BrokenAction):
            moves.append((b.name, [b.move]))
        elif isinstance(b, Group):
            elements = [b.sample(k) for k in jax.random.split(jax.random.fold_in(k_broken, i), n_trials)]
            moves.append((f"coupled action of the {b.name}, largest change over {n_trials} sampled elements",
                          [lambda x, b=b, g=g: b.act(g, x) for g in elements]))
        else:
            raise ValueError(f"broken[{i}] must be a Group or a BrokenAction, got {type(b).__name__}")
    if not moves:
        raise ValueError(
            f"no broken action for the {group.name} (check_uncoupled=False and broken empty): a one-sided check "
            "cannot catch a function that ignores its input; pass broken=(another group, BrokenAction(...))"
        )
    return moves


def _assert_two_sided(fn: Callable, group: Group, key: jax.Array, x: Any, equivariant: bool,
                      broken: Sequence[Group | BrokenAction], check_uncoupled: bool, n_trials: int, rtol: float,
                      atol: float, min_change: float) -> None:
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    k_coupled, k_broken = jax.random.split(key)
    moves = _broken_actions(group, k_broken, broken, check_uncoupled, n_trials)
    out = fn(x)
    for t, k in enumerate(jax.random.split(k_coupled, n_trials)):
        g = group.sample(k)
        expected = group.act(g, out) if equivariant else out
        _assert_close(fn(group.act(g, x)), expected, rtol, atol,
                      f"coupled action of the {group.name}, sampled element {t} of {n_trials} "
                      f"(group.sample(jax.random.split(k, {n_trials})[{t}]), k = jax.random.split(key)[0])")
    for name, candidates in moves:
        changes = [_largest_change(fn(m(x)), m(out) if equivariant else out, f"broken action ({name})")
                   for m in candidates]
        diff, rel, path = max(changes, key=lambda c: c[1])
        if not rel > min_change:
            raise AssertionError(
                f"broken action ({name}) commuted with fn: max abs change {diff:.3e} (field {path}), relative "
                f"{rel:.2e} <= min_change {min_change:.1e}; fn does not see the coupling the {group.name} requires, "
                "so the symmetry check would be vacuous"
            )


def assert_equivariant(
    fn: Callable[[Any], Any],
    group: Group,
    key: jax.Array,
    x: Any,
    *,
    broken: Sequence[Group | BrokenAction] = (),
    check_uncoupled: bool = True,
    n_trials: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    min_change: float = 1e-3,
) -> None:
    """Assert fn(g.x) == g.fn(x) for random g in `group`, and that no broken action b has fn(b(x)) == b(fn(x)).

    Args:
      fn: the map under test, x -> a pytree the group acts on (any channel counts), e.g. an equivariant layer.
      group: a `common.groups.Group`, e.g. ``MonomialGroup(spec, "positive")`` or ``TransformerGroup(spec)``.
      key: PRNG key for the group elements and the broken actions.
      x: input (raw weights or features of the group's space, any leading batch axes).
      broken: more actions fn must NOT commute with: a `BrokenAction`, or a `Group` fn must not respect (e.g.
        ``MonomialGroup(spec, "sign")`` for a ReLU-only layer): fn must fail to commute with at least one of
        `n_trials` random elements of it.
      check_uncoupled: include ``group.uncoupled_actions`` among the broken actions. Turn off only for maps
        that provably cannot see them (e.g. Monomial-NFN's layers, which never couple neighbouring layers), say
        why in the test, and pass other `broken` actions: at least one broken action is required.
      n_trials: number of random elements for the coupled check (and per Group in `broken`).
      rtol, atol: tolerances of the coupled check (per leaf, as numpy's allclose).
      min_change: smallest change each broken action must cause, relative to the largest |output|.
    Raises:
      AssertionError naming the sampled element or the broken action, the field and the max abs difference.
      ValueError if there is no broken action or `broken` holds something else.
    """
    _assert_two_sided(fn, group, key, x, True, broken, check_uncoupled, n_trials, rtol, atol, min_change)


def assert_invariant(
    fn: Callable[[Any], Any],
    group: Group,
    key: jax.Array,
    x: Any,
    *,
    broken: Sequence[Group | BrokenAction] = (),
    check_uncoupled: bool = True,
    n_trials: int = 3,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    min_change: float = 1e-3,
) -> None:
    """Assert fn(g.x) == fn(x) for random g in `group`, and that every broken action b changes fn: fn(b(x)) != fn(x).

    Args:
      fn: the map under test, x -> any pytree (e.g. an invariant layer or a whole predictor's logits).
      group, key, x, broken, check_uncoupled, n_trials, rtol, atol, min_change: as in `assert_equivariant`.
    Raises:
      AssertionError naming the sampled element or the broken action, the field and the max abs difference.
      ValueError if there is no broken action or `broken` holds something else.
    """
    _assert_two_sided(fn, group, key, x, False, broken, check_uncoupled, n_trials, rtol, atol, min_change)
