"""tsw_sl.tree_wasserstein / tsw_sl / db_tsw against independent references: an explicit tree built node by
node and edge by edge, scipy's 1-D W1, POT's sliced Wasserstein, and metric / invariance properties."""
import collections
import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import ot
import pytest
import scipy.special
import scipy.stats
from flax import nnx
from jax.test_util import check_grads

import tsw_sl


# ---------------------------------------------------------------- brute-force tree (independent reference)
def uniform_alpha(z, sources, directions, delta):
    return np.full((len(z), len(sources)), 1.0 / len(sources))


def distance_alpha(z, sources, directions, delta):
    """Softmax over lines of -delta * ||residual of z - x_i off line i|| (explicit residual vectors)."""
    dist = np.empty((len(z), len(sources)))
    for i, (src, th) in enumerate(zip(sources, directions)):
        rel = z - src
        resid = rel - np.outer(rel @ th, th)
        dist[:, i] = np.linalg.norm(resid, axis=1)
    return scipy.special.softmax(-delta * dist, axis=1)


def brute_tree_cost(x, y, a, b, sources, directions, kind, alpha, p):
    """sum_e w_e |mu(subtree) - nu(subtree)|^p on one explicitly built tree of lines."""
    z = np.vstack([x, y])
    w = np.concatenate([a, -b])
    k = len(sources)
    positions, masses = [sources[0]], [0.0]          # node 0 = root (line 0's source)
    on_line = [[] for _ in range(k)]                 # (coordinate, node id) per line
    on_line[0].append((0.0, 0))
    for i in range(1, k):
        if kind == "chain":                          # line i's source is a node on line i-1
            c = float((sources[i] - sources[i - 1]) @ directions[i - 1])
            np.testing.assert_allclose(sources[i - 1] + c * directions[i - 1], sources[i], atol=1e-9)
            positions.append(sources[i]); masses.append(0.0)
            on_line[i - 1].append((c, len(positions) - 1))
            on_line[i].append((0.0, len(positions) - 1))
        else:                                        # every line starts at the root
            np.testing.assert_allclose(sources[i], sources[0], atol=1e-12)
            on_line[i].append((0.0, 0))
    for i in range(k):                               # projected points, mass shared by alpha
        for j in range(len(z)):
            s = float((z[j] - sources[i]) @ directions[i])
            positions.append(sources[i] + s * directions[i]); masses.append(w[j] * alpha[j, i])
            on_line[i].append((s, len(positions) - 1))
    adjacency = collections.defaultdict(list)
    n_edges = 0
    for nodes in on_line:                            # consecutive nodes along a line are joined by edges
        nodes = sorted(nodes)
        for (s0, u), (s1, v) in zip(nodes[:-1], nodes[1:]):
            adjacency[u].append((v, s1 - s0)); adjacency[v].append((u, s1 - s0)); n_edges += 1
    assert n_edges == len(positions) - 1
    parent, length, order = {0: None}, {0: 0.0}, [0]
    for u in order:                                  # breadth-first from the root
        for v, ell in adjacency[u]:
            if v not in parent:
                parent[v], length[v] = u, ell
                order.append(v)
    assert len(order) == len(positions)
    subtree = np.array(masses, dtype=float)
    for v in reversed(order[1:]):
        subtree[parent[v]] += subtree[v]
    assert abs(subtree[0]) < 1e-12                   # total signed mass is zero
    return sum(length[v] * abs(subtree[v]) ** p for v in order[1:])


def brute_costs(x, y, a, b, trees, alpha_fn, p, delta=1.0):
    """Per-tree costs [L] on explicitly built trees."""
    src, th = np.asarray(trees.sources), np.asarray(trees.directions)
    z = np.vstack([x, y])
    return np.array([brute_tree_cost(x, y, a, b, src[l], th[l], trees.kind, alpha_fn(z, src[l], th[l], delta), p)
                     for l in range(src.shape[0])])


def brute_distance(x, y, a, b, trees, alpha_fn, p, delta=1.0):
    return np.mean(brute_costs(x, y, a, b, trees, alpha_fn, p, delta)) ** (1.0 / p)


def random_measures(seed, n=7, m=5, d=3, shift=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 0.8 + shift
    a = rng.uniform(0.1, 1.0, n); a /= a.sum()
    b = rng.uniform(0.1, 1.0, m); b /= b.sum()
    return x, y, a, b


# ---------------------------------------------------------------- closed form vs brute force
@pytest.mark.parametrize("kind", ["chain", "concurrent"])
@pytest.mark.parametrize("splitting", ["uniform", "distance"])
@pytest.mark.parametrize("p", [1, 2])
def test_closed_form_matches_brute_force_tree(kind, splitting, p):
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=hash((kind, splitting, p)) % 1000)
        trees = tsw_sl.sample_trees(jax.random.key(3), 3, 4, 3, kind, root_std=0.7, dtype=jnp.float64)
        got = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting, delta=1.5, p=p)
        alpha_fn = uniform_alpha if splitting == "uniform" else distance_alpha
        want = brute_distance(x, y, a, b, trees, alpha_fn, p, delta=1.5)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("kind, splitting, p, weighted", [
    ("chain", "distance", 2, True), ("concurrent", "distance", 1, True), ("chain", "uniform", 2, True),
    ("chain", "uniform", 1, False),                       # the two-sort path of default weights with n == m
])
def test_return_costs_are_the_brute_force_tree_costs(kind, splitting, p, weighted):
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=31, n=6, m=6)
        u = np.full(6, 1 / 6)
        a, b = (a, b) if weighted else (None, None)
        trees = tsw_sl.sample_trees(jax.random.key(2), 3, 4, 3, kind, root_std=0.7, dtype=jnp.float64)
        dist, costs = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting, delta=1.5, p=p,
                                              return_costs=True)
        alpha_fn = uniform_alpha if splitting == "uniform" else distance_alpha
        want = brute_costs(x, y, u if a is None else a, u if b is None else b, trees, alpha_fn, p, delta=1.5)
        assert dist.shape == () and costs.shape == (3,)
        np.testing.assert_allclose(costs, want, rtol=1e-10)
        np.testing.assert_allclose(dist, np.mean(costs) ** (1 / p), rtol=1e-15)
        plain = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting, delta=1.5, p=p)
        np.testing.assert_allclose(dist, plain, rtol=1e-14)


def test_return_costs_batched_sampled_and_under_jit():
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(2, 6, 2)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(2, 5, 2)) + 1, jnp.float32)
    key = jax.random.key(0)
    trees = tsw_sl.sample_trees(key, 4, 3, 2, "chain")
    dist, costs = jax.jit(lambda x, y: tsw_sl.tree_wasserstein(x, y, trees=trees, splitting="distance", p=2,
                                                               return_costs=True))(xs, ys)
    assert dist.shape == (2,) and costs.shape == (2, 4)
    np.testing.assert_allclose(dist, jnp.sqrt(jnp.mean(costs, -1)), rtol=1e-6)
    dist, costs = tsw_sl.tsw_sl(xs, ys, key=key, n_trees=4, n_lines=3, return_costs=True)
    assert costs.shape == (2, 4)
    np.testing.assert_allclose(dist, tsw_sl.tree_wasserstein(xs, ys, trees=trees), rtol=1e-6)
    np.testing.assert_allclose(dist, jnp.mean(costs, -1), rtol=1e-6)
    dist, costs = tsw_sl.db_tsw(xs[0], ys[0], key=key, n_trees=5, n_lines=2, p=2, return_costs=True)
    assert dist.shape == () and costs.shape == (5,)
    np.testing.assert_allclose(dist, tsw_sl.db_tsw(xs[0], ys[0], key=key, n_trees=5, n_lines=2, p=2), rtol=1e-6)


@pytest.mark.parametrize("call", [
    lambda x, y, t, k: tsw_sl.tree_wasserstein(x, y, t),                            # trees by position
    lambda x, y, t, k: tsw_sl.tree_wasserstein(x, y, None, None, "uniform", trees=t),
    lambda x, y, t, k: tsw_sl.tsw_sl(x, y, k, 4, 3),                                 # the old order
    lambda x, y, t, k: tsw_sl.tsw_sl(x, y, k, n_trees=4, n_lines=3),
    lambda x, y, t, k: tsw_sl.tsw_sl(x, y, n_trees=4, n_lines=3),                    # no key
    lambda x, y, t, k: tsw_sl.db_tsw(x, y, k, n_trees=4, n_lines=3),
    lambda x, y, t, k: tsw_sl.db_tsw(x, y, None, None, 1.0, key=k, n_trees=4, n_lines=3),  # delta by position
])
def test_key_trees_and_options_are_keyword_only(call):
    x, y, a, b, trees = _good()
    with pytest.raises(TypeError):
        call(x, y, trees, jax.random.key(0))


def _sort_lengths(fn, *args):
    """Lengths of the sorted axes of every XLA sort in fn's program."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    lengths = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "sort":
                lengths.append(eqn.invars[0].aval.shape[-1])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return lengths


@pytest.mark.parametrize("kind", ["chain", "concurrent"])
@pytest.mark.parametrize("p", [1, 2])
def test_default_uniform_weights_match_brute_force_tree(kind, p):
    """a = b = None with n == m: for p = 1 the uniform splitting pairs sorted projections (two sorts of n),
    for p = 2 it drops the massless pseudo-points (one sort of 2n); values and gradients equal the brute-force
    tree and the path with explicit uniform weights."""
    with jax.enable_x64(True):
        x, y, _, _ = random_measures(seed=21 + p, n=8, m=8)
        u = np.full(8, 1 / 8)
        trees = tsw_sl.sample_trees(jax.random.key(5), 3, 4, 3, kind, root_std=0.7, dtype=jnp.float64)
        value = lambda x, y: tsw_sl.tree_wasserstein(x, y, trees=trees, p=p, sort_method="xla")
        explicit = lambda x, y: tsw_sl.tree_wasserstein(x, y, u, u, trees=trees, p=p, sort_method="xla")
        np.testing.assert_allclose(value(x, y), brute_distance(x, y, u, u, trees, uniform_alpha, p), rtol=1e-10)
        for g_default, g_explicit in zip(jax.grad(value, (0, 1))(x, y), jax.grad(explicit, (0, 1))(x, y)):
            np.testing.assert_allclose(g_default, g_explicit, rtol=1e-9, atol=1e-12)
        assert set(_sort_lengths(value, x, y)) == ({8} if p == 1 else {16})
        assert set(_sort_lengths(explicit, x, y)) == {16}


def test_learned_splitting_matches_brute_force_tree():
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=11, n=6, m=8)
        trees = tsw_sl.sample_trees(jax.random.key(4), 2, 3, 3, "chain", dtype=jnp.float64)
        split = tsw_sl.LearnedSplitting(3, 3, hidden=(16,), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(split)
        value = lambda params: tsw_sl.tree_wasserstein(x, y, a, b, trees=trees,
                                                       splitting=nnx.merge(graphdef, params))
        got, grads = jax.jit(jax.value_and_grad(value))(params)
        table = np.asarray(split(jnp.asarray(np.vstack([x, y])))[0]).T      # [N, k]
        want = brute_distance(x, y, a, b, trees, lambda z, s, t, dl: table, 1)
        np.testing.assert_allclose(got, want, rtol=1e-10)
        assert not np.allclose(table, 1 / 3)                                  # the map is not constant
        leaves = jax.tree.leaves(grads)
        assert all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("kind", ["chain", "concurrent"])
def test_one_line_is_w1_of_projections(kind):
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=5, n=9, m=4, d=4)
        trees = tsw_sl.sample_trees(jax.random.key(1), 1, 1, 4, kind, dtype=jnp.float64)
        th = np.asarray(trees.directions[0, 0])
        want = scipy.stats.wasserstein_distance(x @ th, y @ th, a, b)
        for splitting in ("uniform", "distance"):
            got = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting)
            np.testing.assert_allclose(got, want, rtol=1e-10)


def test_uniform_splitting_is_weighted_sw1_over_all_directions():
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=6, n=12, m=10, d=5)
        chain = tsw_sl.sample_trees(jax.random.key(2), 4, 3, 5, "chain", dtype=jnp.float64)
        theta = np.asarray(chain.directions).reshape(-1, 5)                  # the k L directions
        want = np.mean([scipy.stats.wasserstein_distance(x @ t, y @ t, a, b) for t in theta])
        got = tsw_sl.tree_wasserstein(x, y, a, b, trees=chain)
        np.testing.assert_allclose(got, want, rtol=1e-10)
        pot = ot.sliced_wasserstein_distance(x, y, a, b, projections=theta.T, p=1)
        np.testing.assert_allclose(got, pot, rtol=1e-10)
        # sources and kind drop out: same directions, other sources, concurrent kind
        other = tsw_sl.TreeSystem(chain.sources * 0 + 3.0, chain.directions, "concurrent")
        np.testing.assert_allclose(tsw_sl.tree_wasserstein(x, y, a, b, trees=other), want, rtol=1e-10)
        # ... but not with the distance splitting, where the tree matters
        d_chain = tsw_sl.tree_wasserstein(x, y, a, b, trees=chain, splitting="distance")
        assert abs(float(d_chain) - want) > 1e-3


@pytest.mark.parametrize("kind", ["chain", "concurrent"])
def test_metric_properties_on_fixed_trees(kind):
    with jax.enable_x64(True):
        trees = tsw_sl.sample_trees(jax.random.key(7), 3, 4, 2, kind, root_std=0.5, dtype=jnp.float64)
        dist = lambda u, v: float(tsw_sl.tree_wasserstein(u[0], v[0], u[1], v[1], trees=trees,
                                                          splitting="distance"))
        rng = np.random.default_rng(0)
        for trial in range(3):
            ms = []
            for _ in range(3):                       # one shape: one compilation
                w = rng.uniform(0.05, 1, 6)
                ms.append((rng.normal(size=(6, 2)) + rng.normal(size=2), w / w.sum()))
            mu, nu, rho = ms
            assert dist(mu, nu) > 0
            np.testing.assert_allclose(dist(mu, nu), dist(nu, mu), rtol=1e-12)
            assert dist(mu, mu) == pytest.approx(0.0, abs=1e-12)
            assert dist(mu, rho) <= dist(mu, nu) + dist(nu, rho) + 1e-12
        # zero on equal measures written with different supports (duplicated points, split weights)
        x, _, a, _ = random_measures(seed=1, n=5, d=2)
        xx, aa = np.vstack([x, x[:2]]), np.concatenate([a[:2] / 2, a[2:], a[:2] / 2])
        assert dist((x, a), (xx, aa)) == pytest.approx(0.0, abs=1e-12)


def random_rigid_motion(seed, d):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r)), rng.normal(size=d) * 3


@pytest.mark.parametrize("kind", ["concurrent", "chain"])
def test_distance_splitting_is_invariant_under_rigid_motions(kind):
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=9, n=8, m=6, d=4)
        trees = tsw_sl.sample_trees(jax.random.key(5), 3, 4, 4, kind, root_std=0.5, dtype=jnp.float64)
        q, v = random_rigid_motion(1, 4)
        moved = tsw_sl.TreeSystem(np.asarray(trees.sources) @ q.T + v, np.asarray(trees.directions) @ q.T, kind)
        for p in (1, 2):
            before = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting="distance", delta=2.0, p=p)
            after = tsw_sl.tree_wasserstein(x @ q.T + v, y @ q.T + v, a, b, trees=moved, splitting="distance",
                                            delta=2.0, p=p)
            np.testing.assert_allclose(after, before, rtol=1e-10)


def test_db_tsw_is_concurrent_distance_tree_wasserstein_rooted_at_the_mixture_mean():
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=2, n=8, m=6, d=3)
        key = jax.random.key(8)
        mean = 0.5 * (a @ x + b @ y)
        trees = tsw_sl.sample_trees(key, 5, 3, 3, "concurrent", root_mean=mean, root_std=0.1, dtype=jnp.float64)
        want = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting="distance", delta=3.0)
        got = tsw_sl.db_tsw(x, y, a, b, key=key, n_trees=5, n_lines=3, delta=3.0)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # Db-TSW-orth: orthonormal directions per tree
        orth = tsw_sl.db_tsw(x, y, a, b, key=key, n_trees=5, n_lines=3, orthogonal=True)
        assert np.isfinite(orth) and orth > 0


def test_tsw_sl_samples_then_computes():
    x, y, a, b = random_measures(seed=3)
    key = jax.random.key(0)
    trees = tsw_sl.sample_trees(key, 4, 3, 3, "chain", t_range=(-0.1, 0.1))
    want = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting="distance", p=2)
    got = tsw_sl.tsw_sl(x, y, a, b, key=key, n_trees=4, n_lines=3, splitting="distance", p=2,
                        t_range=(-0.1, 0.1))
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------- autodiff, jit, vmap
def test_gradients_finite_at_coincident_points_and_sources():
    chain = tsw_sl.sample_trees(jax.random.key(0), 2, 3, 2, "chain")
    concurrent = tsw_sl.sample_trees(jax.random.key(0), 2, 3, 2, "concurrent")
    x = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    x = x.at[0].set(chain.sources[0, 1]).at[1].set(concurrent.sources[1, 0])  # points on line sources

    @functools.partial(jax.jit, static_argnames=("splitting", "p"))
    def grad(x, y, trees, splitting, p):
        return jax.grad(lambda x: tsw_sl.tree_wasserstein(x, y, trees=trees, splitting=splitting, p=p))(x)

    for y in (x, x[::-1], x.at[2].add(0.5)):               # identical measures, ties, a generic pair
        for trees, splitting, p in ((chain, "distance", 2), (concurrent, "distance", 1), (chain, "uniform", 1)):
            assert np.all(np.isfinite(grad(x, y, trees, splitting, p))), (trees.kind, splitting, p)
    g = jax.grad(lambda x: tsw_sl.db_tsw(x, x, key=jax.random.key(1), n_trees=3, n_lines=2, p=2))(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("d", [3, 5])  # the distance's gradient from the perpendicular vectors / their parts
@pytest.mark.parametrize("kind", ["chain", "concurrent"])
def test_gradient_matches_finite_differences(kind, d):
    with jax.enable_x64(True):
        x, y, a, b = random_measures(seed=4, n=5, m=4, d=d)
        trees = tsw_sl.sample_trees(jax.random.key(6), 2, 3, d, kind, root_std=0.5, dtype=jnp.float64)
        f = lambda x, y, a, b: tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting="distance", p=2,
                                                       normalize_weights=True)
        check_grads(f, (x, y, a, b), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("d", [2, 16])  # the coordinate-wise projection and its written-out gradient
def test_projection_gradient_matches_autodiff_of_the_product(d):
    """`splitting.project`'s gradients w.r.t. the points and the directions (matrix products over the directions'
    rows) equal autodiff of the plain matrix product, for batched directions [B, L, k, d] and under vmap; and the
    gradient w.r.t. directions is not the points' (a mix-up of the two products would fail here)."""
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.normal(size=(7, d)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=(2, 3, 4, d)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(2, 3, 4, 7)), jnp.float32)
    loss = lambda fn: lambda z, theta: jnp.sum(weight * fn(z, theta) ** 2)
    plain = lambda z, theta: jnp.einsum("nd,...d->...n", z, theta)
    got = jax.jit(jax.grad(loss(tsw_sl.splitting.project), (0, 1)))(z, theta)
    want = jax.grad(loss(plain), (0, 1))(z, theta)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    per_batch = lambda fn: jax.vmap(lambda t, w: jax.grad(lambda z: jnp.sum(w * fn(z, t) ** 2))(z))(theta, weight)
    np.testing.assert_allclose(np.asarray(per_batch(tsw_sl.splitting.project)), np.asarray(per_batch(plain)),
                               rtol=1e-5, atol=1e-5)
    assert got[0].shape == z.shape and got[1].shape == theta.shape


def test_jit_vmap_and_leading_batch_axes():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 6, 2)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(3, 4, 2)) + 1, jnp.float32)
    bs = jnp.asarray(rng.dirichlet(np.ones(4), size=3), jnp.float32)
    trees = tsw_sl.sample_trees(jax.random.key(1), 5, 3, 2, "chain", root_std=0.5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, y, b):
        return tsw_sl.tree_wasserstein(x, y, b=b, trees=trees, splitting="distance", p=2)

    loop = np.array([f(xs[i], ys[i], bs[i]) for i in range(3)])
    np.testing.assert_allclose(jax.vmap(f)(xs, ys, bs), loop, rtol=1e-5)
    np.testing.assert_allclose(tsw_sl.tree_wasserstein(xs, ys, b=bs, trees=trees, splitting="distance", p=2), loop,
                               rtol=1e-5)
    # trees batched alongside the measures
    batched = jax.tree.map(lambda t: jnp.stack([t] * 3), trees)
    np.testing.assert_allclose(tsw_sl.tree_wasserstein(xs, ys, b=bs, trees=batched, splitting="distance", p=2),
                               loop,
                               rtol=1e-5)
    key = jax.random.key(2)
    tsw = lambda x, y: tsw_sl.tsw_sl(x, y, key=key, n_trees=4, n_lines=3, kind="concurrent")
    g = jax.jit(jax.vmap(jax.grad(tsw)))(xs, ys)
    assert g.shape == xs.shape and np.all(np.isfinite(g))
    assert tsw_sl.tree_wasserstein(xs, ys, trees=trees).dtype == jnp.float32
    # Db-TSW over leading batch axes: one root per pair (at that pair's mean), same key
    db_loop = np.array([tsw_sl.db_tsw(xs[i], ys[i], key=key, n_trees=4, n_lines=2) for i in range(3)])
    np.testing.assert_allclose(tsw_sl.db_tsw(xs, ys, key=key, n_trees=4, n_lines=2), db_loop, rtol=1e-5)
    # the numpy callback and the XLA sort give the same values and gradients (this test process has 4 devices,
    # where "auto" picks XLA's sort, so the callback is asked for explicitly)
    def value(method):
        return lambda x: tsw_sl.tree_wasserstein(x, ys, b=bs, trees=trees, splitting="distance", p=2,
                                                 sort_method=method)

    np.testing.assert_allclose(value("numpy")(xs), value("xla")(xs), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda x: value("numpy")(x).sum())(xs),
                               jax.grad(lambda x: value("xla")(x).sum())(xs), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(value("numpy")(xs), loop, rtol=1e-5)


# ---------------------------------------------------------------- input validation
def _good():
    x, y, a, b = random_measures(seed=0)
    return x, y, a, b, tsw_sl.sample_trees(jax.random.key(0), 2, 3, 3)


@pytest.mark.parametrize("change, match", [
    (dict(y=np.zeros((4, 2))), r"same dimension d.*x \(7, 3\), y \(4, 2\)"),
    (dict(x=np.zeros((7,))), r"x must have shape \[\.\.\., n_points, d\]"),
    (dict(x=np.zeros((0, 3)), a=None), r"x is empty"),
    (dict(y=np.full((5, 3), np.nan)), r"y contains non-finite"),
    (dict(a=np.array([0.5, 0.5, 0.2, -0.2, 0, 0, 0])), r"a must be non-negative"),
    (dict(b=np.full(5, 0.3)), r"b must sum to 1"),
    (dict(a=np.full(6, 1 / 6)), r"a must have shape \(7,\).*got \(6,\)"),
    (dict(trees=tsw_sl.TreeSystem(np.zeros((2, 3, 4)), np.ones((2, 3, 4)))), r"trees have dimension 4.*d = 3"),
    (dict(trees=tsw_sl.TreeSystem(np.zeros((2, 3, 3)), np.ones((2, 2, 3)))),
     r"trees.sources and trees.directions"),
    (dict(trees=np.zeros((2, 3, 3))), r"trees must be a tsw_sl.TreeSystem"),
    (dict(splitting="soft"), r"splitting must be one of"),
    (dict(p=0.5), r"p must be a finite Python number >= 1"),
    (dict(p=np.inf), r"p must be a finite Python number >= 1.*got inf"),
    (dict(splitting="distance", delta=np.nan), r"delta must be a finite number; got nan"),
])
def test_bad_inputs_raise(change, match):
    x, y, a, b, trees = _good()
    args = dict(x=x, y=y, a=a, b=b, trees=trees, splitting="uniform", p=1)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        tsw_sl.tree_wasserstein(**args)


def test_normalize_weights_option():
    x, y, a, b, trees = _good()
    want = tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting="distance")
    got = tsw_sl.tree_wasserstein(x, y, 3 * a, 0.5 * b, trees=trees, splitting="distance", normalize_weights=True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="a must have a positive total"):
        tsw_sl.tree_wasserstein(x, y, 0 * a, b, trees=trees, normalize_weights=True)


def test_training_step_sharded_over_four_devices():
    """A TSW-SL loss trains inside the data-parallel loop on the 4 simulated devices, and "auto" sorting puts no
    host callback into programs of a multi-device process (one stalled the all-reduce in a 4-device run of the
    generator demo); the numpy callback is still there when asked for."""
    import optax

    from common import training

    assert jax.device_count() == 4
    target = jax.random.normal(jax.random.key(0), (64, 2)) + 2.0

    def loss_fn(x, batch, key):
        return tsw_sl.tsw_sl(x, batch, key=key, n_trees=5, n_lines=3), {}

    start = jax.random.normal(jax.random.key(1), (64, 2))
    program = lambda method: str(jax.make_jaxpr(
        lambda x: tsw_sl.tsw_sl(x, target, key=jax.random.key(3), n_trees=5, n_lines=3, sort_method=method))(start))
    assert "callback" not in program("auto") and "callback" in program("numpy")
    state, history = training.fit(loss_fn, start, optax.adam(0.05), lambda step: target, key=jax.random.key(2),
                                  num_steps=20, progress=False)
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss"] < 0.5 * history[0]["loss"]
