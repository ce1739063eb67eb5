"""The O(L) prefix/suffix building blocks against a naive O(L^2) reference, and their cost in L."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import NetworkSpec
from magep import terms
from magep.init import init_couplings
from tests.magep_fixtures import random_features


def _product(weights, s, t):
    """W^(s,t) = W^(s) ... W^(t+1) for one channel (numpy), s > t."""
    out = weights[t]
    for l in range(t + 1, s):
        out = weights[l] @ out
    return out


def _naive_blocks(weights, biases, couplings):
    """Every block of equivariant_blocks, built from explicit W^(s,t) per channel (O(L^2) products)."""
    L = len(weights)
    C = weights[0].shape[-1]
    out = {}
    chan = lambda c: ([np.asarray(w[..., c]) for w in weights], [np.asarray(b[..., c]) for b in biases])
    Phi = {k: np.asarray(v) for k, v in couplings["Phi"].items()}
    phi = {k: np.asarray(v) for k, v in couplings["phi"].items()}
    per_channel = []
    for c in range(C):
        W, b = chan(c)
        P = lambda s, t: _product(W, s, t)
        blk = {"b1": [b[0]]}
        S = {l: sum((P(l, t) @ b[t - 1] for t in range(1, l)), np.zeros(W[l - 1].shape[0])) for l in range(1, L + 1)}
        WW = lambda s, t: P(s, 0) @ Phi[terms.pair_key(s, t)][c] @ P(L, t)
        bW = lambda s, t: np.outer(b[s - 1], phi[terms.pair_key(s, t)][c] @ P(L, t))
        for l in range(1, L + 1):
            blk[f"P{l}"] = [W[l - 1], WW(l, l - 1), bW(l, l - 1)]
        for l in range(2, L + 1):
            blk[f"M{l}"] = [P(l, 0), WW(l, 0), bW(l, 0)]
            blk[f"S{l}"] = [S[l], b[l - 1]]
        tww = [np.trace(P(s, 0) @ Phi[terms.pair_key(s, s)][c] @ P(L, s)) for s in range(1, L)]
        tbw = [phi[terms.pair_key(s, s)][c] @ (P(L, s) @ b[s - 1]) for s in range(1, L)]
        blk["T"] = [np.array(tww), np.array(tbw)]
        per_channel.append(blk)
    for name in per_channel[0]:
        parts = len(per_channel[0][name])
        out[name] = np.stack([np.stack([per_channel[c][name][i] for c in range(C)], -1) for i in range(parts)], 0)
    return out


@pytest.mark.parametrize("widths", [(2, 3, 4), (3, 4, 5, 2), (2, 3, 2, 4, 3, 2)])
def test_blocks_match_naive_products(widths):
    spec = NetworkSpec.mlp(widths)
    L, C = spec.num_layers, 2
    with jax.enable_x64(True):
        f = random_features(L, spec, channels=C)
        couplings = init_couplings(jax.random.key(7), terms.coupling_pairs(L), C, widths[0], widths[-1], jnp.float64)
        couplings = jax.tree.map(lambda x: 1e3 * x, couplings)  # O(1) couplings so every term matters
        fast = jax.jit(terms.equivariant_blocks)(f.weights, f.biases, couplings)
        naive = _naive_blocks(f.weights, f.biases, couplings)
        assert set(fast) == set(naive)
        for name, ref in naive.items():
            got = np.asarray(fast[name])
            ref = np.concatenate(list(ref), -1)  # parts are concatenated along channels, part-major
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12, err_msg=name)
        inv = jax.jit(terms.invariant_blocks)(f.weights, f.biases, couplings)
        for name in ("M", "S", "T"):
            src = "T" if name == "T" else f"{name}{L}"
            np.testing.assert_allclose(np.asarray(inv[name]), np.asarray(fast[src]), rtol=1e-12, err_msg=name)


def test_pairs_are_the_3L_minus_2_used():
    for L in range(2, 7):
        pairs = terms.coupling_pairs(L)
        assert len(pairs) == len(set(pairs)) == 3 * L - 2
        assert set(terms.invariant_pairs(L)) <= set(pairs) and len(terms.invariant_pairs(L)) == L


def _count_matmuls(L, width=3):
    spec = NetworkSpec.mlp((3,) + (width,) * (L - 1) + (2,))
    f = random_features(0, spec, channels=1, dtype=jnp.float32)
    couplings = init_couplings(jax.random.key(1), terms.coupling_pairs(L), 1, 3, 2)
    jaxpr = jax.make_jaxpr(terms.equivariant_blocks)(f.weights, f.biases, couplings)
    return str(jaxpr).count("dot_general[")  # nested ones too (`terms.matmul` is a custom_jvp call)


def test_number_of_products_is_linear_in_depth():
    counts = [_count_matmuls(L) for L in range(3, 7)]
    steps = np.diff(counts)
    assert np.all(steps == steps[0]) and steps[0] > 0, counts  # affine in L: no O(L^2) pair loop


def _contracted_lhs_axes(compiled_text):
    """The lhs contracting axes of every dot in a compiled program's text."""
    return [line.split("lhs_contracting_dims={")[1].split("}")[0] for line in compiled_text.splitlines()
            if " dot(" in line and "lhs_contracting_dims" in line]


def test_matmul_is_x_at_y_and_its_gradient_reads_rows_from_a_transposed_copy():
    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(kx, (3, 4, 5, 6)), jax.random.normal(ky, (3, 4, 6, 7))
    loss = lambda mm: lambda x, y: jnp.sum(jnp.sin(mm(x, y)))
    plain = lambda x, y: x @ y
    np.testing.assert_allclose(terms.matmul(x, y), x @ y, rtol=1e-6, atol=1e-6)
    batched_grad = lambda f, argnums: jax.vmap(jax.grad(f, argnums))
    for mode in (jax.grad, jax.jacfwd, batched_grad):  # reverse mode, forward mode (custom_jvp keeps it), vmapped
        for got, want in zip(mode(loss(terms.matmul), (0, 1))(x, y), mode(loss(plain), (0, 1))(x, y)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # x^T g as JAX writes it sums over axis 2 (the rows) of x, a form XLA CPU's YNNPACK kernels refuse; with the
    # copy every product of the gradient contracts its lhs's last axis, where the plain product's gradient does not
    compiled = lambda mm: jax.jit(jax.grad(loss(mm), (0, 1))).lower(x, y).compile().as_text()
    assert set(_contracted_lhs_axes(compiled(terms.matmul))) == {"3"}
    assert "2" in _contracted_lhs_axes(compiled(plain))
    # matrix-vector products and broadcast batch axes stay plain products (nothing to gain, XLA's own kernels)
    for a, b in (((3, 4, 5, 6), (3, 4, 6, 1)), ((3, 1, 5, 6), (3, 4, 6, 7))):
        assert "custom_jvp_call" not in str(jax.make_jaxpr(terms.matmul)(jnp.ones(a), jnp.ones(b)))
    assert "custom_jvp_call" in str(jax.make_jaxpr(terms.matmul)(x, y))
