"""One job of ``benchmarks.vs_reference`` on this library, in its own process (the project's Python).

    python -m benchmarks.vs_reference_ours --job ours_magep --batch 64 --mode fwdbwd
    python -m benchmarks.vs_reference_ours --job ours_sw --n 1000 --d 100 --trees 25 --lines 4 --mode fwd
    python -m benchmarks.vs_reference_ours --job ours_cnn_zoo --models 8 --steps 4 --mode train

Same protocol as the reference jobs (``benchmarks.vs_reference_protocol``); every call ends with
``jax.block_until_ready``; the first call includes the ``jax.jit`` trace and XLA compile.
NFNs: ``fwd`` the jitted logits, parameters and inputs as jit arguments; ``fwdbwd`` the jitted value and
gradient of the BCE loss (``optax.sigmoid_binary_cross_entropy`` on the logits, uniform random targets) w.r.t.
every ``nnx.Param``; both as the library predicts and trains (``"auto"`` micro-batches: 16 rows above batch 64 on
the calling thread); inputs random normal with the CNN-zoo / small-transformer-zoo shapes, the configurations
the authors published (docs/magep.md, docs/transformer_nfn.md). TSW / SW: the jitted distance, or value and
gradient w.r.t. Y; tree frames / projections drawn once and passed as arguments; both with XLA's
FLOP and byte counts of one call (``cost_analysis``).
Zoo jobs (``train``): ms per model-step of the recipe's population training (`benchmarks.zoo_throughput`):
one record per run, ``median_s`` = seconds per model-step, ``first_call_s`` = compile seconds.
"""
from __future__ import annotations

import os
import subprocess

from benchmarks import vs_reference_protocol as protocol
from common import compilation_cache

NFN_JOBS = {"ours_magep": "magep", "ours_magep_normalized": "magep", "ours_monomial": "monomial", "ours_nfn_hnp": "hnp",
            "ours_nfn_np": "np", "ours_tnfn": None}
# options beyond the defaults, per job: the authors' MAGEP-NFN keeps its couplings as fixed random buffers and has no
# scale normalisation, so "ours_magep" runs their architecture; "ours_magep_normalized" adds the library's default
# normalisation (`magep.normalize_scale`, docs/magep.md §4), the same parameters and more work
NFN_OPTIONS = {"ours_magep": {"freeze_phi": True, "normalize": False}, "ours_magep_normalized": {"freeze_phi": True}}
TSW_JOBS = ("ours_tsw_chain", "ours_tsw_weighted", "ours_tsw_distance", "ours_dbtsw", "ours_sw")
ZOO_JOBS = ("ours_cnn_zoo", "ours_siren")
JOBS = tuple(NFN_JOBS) + TSW_JOBS + ZOO_JOBS
CNN_SHAPES_W = ((16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (10, 16))
CNN_SHAPES_B = ((16,), (16,), (16,), (10,))


def _jit_pair(forward, loss, args, target):
    """(fwd, fwdbwd) callables of a model's jitted logits and jitted BCE value-and-gradient, compiled with the
    options of the library's train step (`common.training.STEP_COMPILER_OPTIONS`) and computed as the library
    predicts (`common.accuracy_prediction.predict_logits`) and trains (`fit_predictor`): in ``"auto"``
    micro-batches (`common.microbatch`: chunks of 16 rows on a CPU for batches above 16). ``args`` is
    ``(params, other variables, *inputs)``, the inputs and ``target`` with the batch axis leading. Each callable
    has a ``cost_analysis()`` giving XLA's ``flops`` and ``bytes_accessed`` of one call, taken from the same
    computation on the whole batch at once (XLA counts a loop's body once, not once per chunk; it compiles the
    function once more, so the protocol calls it after the timed calls) and, in the same process, the time of the
    timed program's matrix products alone (`products_record`), and a ``staged()`` giving the jitted function it
    calls and its arguments (`benchmarks.step_profile` times a first call stage by stage and profiles the
    executable)."""
    import functools

    import jax

    from benchmarks.harness import xla_cost
    from common.microbatch import AUTO, chunk_count, map_in_chunks, value_and_grad_in_chunks
    from common.training import STEP_COMPILER_OPTIONS

    chunks = chunk_count(AUTO, len(target))

    def logits(params, other, inputs, chunks=chunks):
        return map_in_chunks(lambda rows: forward(params, other, *rows), chunks)(inputs)

    def gradient(params, other, inputs, t, chunks=chunks):
        batch_loss = lambda p, batch, key: (loss(p, other, *batch[0], batch[1]), {})
        return value_and_grad_in_chunks(batch_loss, chunks)(params, (inputs, t), jax.random.key(0))

    jit = lambda fn: jax.jit(fn, compiler_options=STEP_COMPILER_OPTIONS)
    fwd_jit, step_jit = jit(logits), jit(gradient)
    fwd_args = (args[0], args[1], tuple(args[2:]))
    step_args = fwd_args + (target,)

    def fwd():
        return jax.block_until_ready(fwd_jit(*fwd_args))

    def fwdbwd():
        (value, _), grads = step_jit(*step_args)
        jax.block_until_ready(grads)
        return value

    whole = lambda fn: jit(functools.partial(fn, chunks=1))
    fwd.cost_analysis = lambda: (xla_cost(whole(logits).lower(*fwd_args).compile())
                                 | products_record(fwd_jit, fwd_args))
    fwdbwd.cost_analysis = lambda: (xla_cost(whole(gradient).lower(*step_args).compile())
                                    | products_record(step_jit, step_args))
    fwd.staged = lambda: (fwd_jit, fwd_args)
    fwdbwd.staged = lambda: (step_jit, step_args)
    return fwd, fwdbwd


def products_record(jitted, args: tuple) -> dict:
    """The matrix products of ``jitted``'s program on ``args`` (every dot of it, as many times as one call runs
    it, `step_profile.products`) computed alone by one program on operands of their own (`step_profile.
    products_alone`), timed in this process right after the step's timed calls, so that they can be set against
    the step and the authors' job interleaved with it without the host's drift between runs: ``products`` (their
    count), ``products_alone_s`` (median), ``products_flops`` and ``products_other_cpu_frac`` (the contention of
    their timed calls)."""
    from benchmarks.step_profile import products, products_alone

    found = products(jitted.lower(*args).compile().as_text())
    alone = products_alone(found)
    return dict(products=sum(p["count"] for p in found), products_alone_s=alone["seconds"],
                products_flops=alone["flops"], products_other_cpu_frac=alone["other_cpu_frac"])


def build_cnn_nfn(job: str, batch: int):
    """(fwd, fwdbwd, info) of a `magep.GeneralizationPredictor` on a CNN-zoo batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from common import NetworkSpec, WeightSpace
    from magep import GeneralizationPredictor

    nfn = NFN_JOBS[job]
    rng = np.random.default_rng(0)
    draw = lambda shapes: tuple(jnp.asarray(rng.standard_normal((batch,) + s), jnp.float32) for s in shapes)
    ws = WeightSpace(draw(CNN_SHAPES_W), draw(CNN_SHAPES_B))
    spec = NetworkSpec.from_weights(ws)
    feats = ws.to_features()
    extra = NFN_OPTIONS.get(job, {})
    model = GeneralizationPredictor(spec, nfn=nfn, rngs=nnx.Rngs(0), **extra)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = jnp.asarray(rng.uniform(size=(batch,)), jnp.float32)

    def forward(p, r, w, b):
        return nnx.merge(graphdef, p, r).logits(WeightSpace(w, b, is_features=True))

    def loss(p, r, w, b, t):
        return optax.sigmoid_binary_cross_entropy(forward(p, r, w, b), t).mean()

    fwd, fwdbwd = _jit_pair(forward, loss, (params, rest, feats.weights, feats.biases), target)
    options = "".join(f", {k}={v!r}" for k, v in extra.items())
    info = dict(config=f"magep.GeneralizationPredictor(nfn={nfn!r}, default channels and head{options})",
                n_params=int(sum(x.size for x in jax.tree.leaves(params))))
    return fwd, fwdbwd, info


def build_tnfn(batch: int):
    """(fwd, fwdbwd, info) of a `transformer_nfn.AccuracyPredictor` on a small-transformer-zoo batch."""
    import jax
    import optax
    from flax import nnx

    from transformer_nfn import AccuracyPredictor, TransformerSpec, nets

    zoo = TransformerSpec(num_blocks=2, num_heads=2, d_model=32, d_k=16, d_v=16, d_ffn=64)
    weights = jax.vmap(lambda k: nets.init_weights(k, zoo, 10))(jax.random.split(jax.random.key(batch), batch))
    leaves, treedef = jax.tree.flatten(weights)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    target = jax.random.uniform(jax.random.key(2), (batch,))
    model = AccuracyPredictor(zoo, classifier_widths=(32, 32, 10), embedding_size=544, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(p, r, xs):
        return nnx.merge(graphdef, p, r).logits(jax.tree.unflatten(treedef, xs))

    def loss(p, r, xs, t):
        return optax.sigmoid_binary_cross_entropy(forward(p, r, xs), t).mean()

    fwd, fwdbwd = _jit_pair(forward, loss, (params, rest, leaves), target)
    info = dict(config="transformer_nfn.AccuracyPredictor(zoo D=32 h=2 Dk=Dv=16 DA=64 2 blocks, classifier_widths "
                       "(32, 32, 10), embedding_size 544, defaults otherwise)",
                n_params=int(sum(x.size for x in jax.tree.leaves(params))))
    return fwd, fwdbwd, info


def build_nfn(job: str, batch: int, mode: str):
    """(call, info) of one of our NFN predictor jobs (`build_tnfn` for ``ours_tnfn``, else `build_cnn_nfn`): its
    forward for ``mode`` "fwd", else its forward + BCE + gradient; the call has ``staged()``."""
    fwd, fwdbwd, info = build_tnfn(batch) if job == "ours_tnfn" else build_cnn_nfn(job, batch)
    return (fwd if mode == "fwd" else fwdbwd), info


def build_tsw(job: str, n: int, d: int, trees: int, lines: int, p: int):
    """(fwd, fwdbwd, info) of one of our TSW / SW distances between two random clouds of n points in R^d."""
    import jax
    import jax.numpy as jnp

    import tsw_sl
    from benchmarks.harness import xla_cost

    kx, ky, kt = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d))
    y = jax.random.normal(ky, (n, d)) + 0.5
    mean_x = jnp.mean(x, axis=0)
    uniform = jnp.full((n,), 1.0 / n)
    if job in ("ours_tsw_chain", "ours_tsw_weighted", "ours_tsw_distance"):
        frames = tsw_sl.sample_trees(kt, trees, lines, d, "chain", root_mean=mean_x, root_std=0.1,
                                     t_range=(-0.1, 0.1))
    elif job == "ours_dbtsw":
        frames = tsw_sl.sample_trees(kt, trees, lines, d, "concurrent", root_mean=mean_x, root_std=0.1)
    else:
        frames = tsw_sl.trees.random_directions(kt, (trees * lines,), d, jnp.float32)
    distances = {
        "ours_tsw_chain": (1, lambda x, y, t: tsw_sl.tree_wasserstein(x, y, trees=t),
                           "tree_wasserstein(chain, uniform splitting, p=1, default weights): the fast path"),
        "ours_tsw_weighted": (p, lambda x, y, t: tsw_sl.tree_wasserstein(x, y, uniform, uniform, trees=t, p=p),
                              f"tree_wasserstein(chain, uniform splitting, p={p}, explicit uniform weights)"),
        "ours_tsw_distance": (p, lambda x, y, t: tsw_sl.tree_wasserstein(x, y, trees=t, splitting="distance",
                                                                         delta=2.0, p=p),
                              f"tree_wasserstein(chain, splitting='distance', delta=2, p={p})"),
        "ours_dbtsw": (p, lambda x, y, t: tsw_sl.tree_wasserstein(x, y, trees=t, splitting="distance", delta=2.0,
                                                                  p=p),
                       f"Db-TSW: tree_wasserstein(concurrent trees, splitting='distance', delta=2, p={p})"),
        "ours_sw": (p, lambda x, y, t: tsw_sl.sliced_wasserstein(x, y, projections=t, n_projections=trees * lines,
                                                                 p=p),
                    f"sliced_wasserstein(p={p}, {trees * lines} projections drawn once)"),
    }
    power, distance, config = distances[job]
    fwd_jit, grad_jit = jax.jit(distance), jax.jit(jax.value_and_grad(distance, argnums=1))

    def fwd():
        return jax.block_until_ready(fwd_jit(x, y, frames))

    def fwdbwd():
        value, grad = grad_jit(x, y, frames)
        jax.block_until_ready(grad)
        return value

    # XLA's counts of one call (the host sort in its numpy callback is not among them); for Db-TSW also the host
    # sort alone, the part of the step no layout change can shorten
    sort_s = (lambda: {"host_sort_s": host_sort_seconds((trees * lines, 2 * n))}) if job == "ours_dbtsw" else dict
    fwd.cost_analysis = lambda: xla_cost(fwd_jit.lower(x, y, frames).compile()) | sort_s()
    fwdbwd.cost_analysis = lambda: xla_cost(grad_jit.lower(x, y, frames).compile()) | sort_s()
    return fwd, fwdbwd, dict(config=config, p=power)


def host_sort_seconds(shape: tuple[int, int]) -> float:
    """Median seconds of the library's host sort (`tsw_sl.sorting.host_argsort`, on the cores it may use) of
    random float32 keys of ``shape`` [rows, N], outside any jitted call, timed by the protocol's `time_calls` (at
    least 5 calls and 0.5 s): the sort of one distance call without the callback's round trip (~0.01 ms)."""
    import numpy as np

    from tsw_sl import sorting

    keys = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return protocol.time_calls(lambda: sorting.host_argsort(keys), warmup=1, min_window_s=0.5)["median_s"]


def zoo_record(job: str, models: int, steps: int) -> dict:
    """Our population training of the recipe: ms per model-step (``benchmarks.zoo_throughput``) as a record:
    ``median_s`` = ``min_s`` = seconds per model-step, ``first_call_s`` = compile seconds, and the contention of
    the timed epochs."""
    from benchmarks import zoo_throughput
    from common.population import CPU_CHUNK
    from magep import zoo_recipes as recipes

    chunk = min(models, CPU_CHUNK)
    with protocol.Contention() as c:
        if job == "ours_cnn_zoo":
            row = zoo_throughput.population_step("mnist", ["relu"], [models], [chunk], steps,
                                                 recipes.CNN_BATCH_SIZE, peak=1.0)[0]
            config = (f"common.population.train_population, Small CNN Zoo recipe (relu, batch "
                      f"{recipes.CNN_BATCH_SIZE}, MNIST), {models} models vmapped in chunks of {chunk}")
        else:
            row = zoo_throughput.siren_benchmark(models, steps, [chunk], peak=1.0, ceilings=False)["rows"][0]
            config = (f"common.population.train_population, SIREN recipe (2-32-32-1, full 28 x 28 MNIST grid, "
                      f"Adam lr {recipes.SIREN_LEARNING_RATE}), {models} fits vmapped in chunks of {chunk}")
    resolved = row["two_epochs_s"] > row["one_epoch_s"]  # else the step time drowned in noise (too few steps)
    return dict(config=config, median_s=row["step_s"], min_s=row["step_s"], first_call_s=row["compile_s"],
                one_epoch_s=row["one_epoch_s"], two_epochs_s=row["two_epochs_s"], reps=1,
                other_cpu_frac=None if c.other_cpu_frac is None else round(c.other_cpu_frac, 3),
                status="ok" if resolved else "error",
                **({} if resolved else {"error": "2 epochs took no longer than 1: raise --zoo-steps"}))


def git_commit(root: str | None = None) -> str:
    """The commit checked out at ``root`` (default: this project), with "+modified" appended when a tracked Python
    source or setup.cfg differs from it (the measured code is then not that commit's; results and docs written
    meanwhile do not count); "unknown" without git."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = lambda *args: subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD").stdout.strip()
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "*.py", "setup.cfg").stdout.strip()
    except OSError:
        return "unknown"
    return (head + ("+modified" if changed else "")) if head else "unknown"


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> dict:
    args = protocol.job_arguments(__doc__.splitlines()[0], JOBS, argv)
    record = protocol.base_record(args)
    import flax
    import jax

    from common.host_memory import calling_thread_dispatch, keep_freed_memory

    record.update(jax=jax.__version__, flax=flax.__version__, repo="nfn_tsw", commit=git_commit(),
                  keep_freed_memory=keep_freed_memory(),  # as a training script starts (docs/common.md §10)
                  async_dispatch=not calling_thread_dispatch(), xla_flags=os.environ.get("XLA_FLAGS", ""))
    if args.job in ZOO_JOBS:
        def run():
            record["calib_ms"] = protocol.calibrate()
            record.update(zoo_record(args.job, args.models, args.steps))
        try:
            run()
        except Exception as e:  # noqa: BLE001 - reported in the record
            record.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        return protocol.emit(record)

    def build():
        if args.job in NFN_JOBS:
            return build_nfn(args.job, args.batch, args.mode)
        fwd, fwdbwd, info = build_tsw(args.job, args.n, args.d, args.trees, args.lines, args.p)
        return (fwd if args.mode == "fwd" else fwdbwd), info

    return protocol.measure(record, build, args.repeats)


if __name__ == "__main__":
    main()
