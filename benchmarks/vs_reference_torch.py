"""One job of ``benchmarks.vs_reference`` on the authors' PyTorch code (or POT), in its own process.

Run by the driver with the reference Python (torch, numpy, einops, POT installed), from the project root:
    REF_PY -m benchmarks.vs_reference_torch --job magep --batch 64 --mode fwdbwd --reference-dir DIR
    REF_PY -m benchmarks.vs_reference_torch --job dbtsw --n 1000 --d 100 --trees 25 --lines 4 --mode fwd ...
    REF_PY -m benchmarks.vs_reference_torch --job nfn_hnp --batch 64 --mode fwdbwd --count-flops --reference-dir DIR

The authors' code is imported from ``DIR/<checkout>`` (names and commits in ``benchmarks.vs_reference``); each
job runs in a fresh process because MAGEP-NFN, Monomial-NFN and nfn all ship top-level packages ``nfn`` and
``experiments``. CPU, ``torch.set_num_threads(--threads)``, float32, seeded random-normal inputs.
``fwd``: forward under ``torch.no_grad()``; ``fwdbwd``: NFNs forward + BCE loss against uniform random targets +
``backward()`` over all parameters (a training step without the optimizer update); TSW / SW: distance +
gradient w.r.t. the moving cloud Y. Tree frames / projections are drawn once, outside the timed call.
``--count-flops`` (NFN jobs): no timing; the record holds the call's matrix-product FLOPs as torch's
``FlopCounterMode`` counts them (`count_nfn_flops`).
POT runs with its torch backend when torch imports, else its numpy backend (``fwd`` only).
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

from benchmarks import vs_reference_protocol as protocol

CHECKOUTS = {"magep": "MAGEP-NFN", "monomial": "Monomial-NFN", "nfn_hnp": "nfn", "nfn_np": "nfn",
             "tnfn": "Transformer-NFN", "tsw_chain": "TS-Sobolev", "dbtsw": "DbTSW", "dbtsw_compiled": "DbTSW"}
JOBS = tuple(CHECKOUTS) + ("pot",)
NFN_JOBS = ("magep", "monomial", "nfn_hnp", "nfn_np", "tnfn")


def checkout(reference_dir: str | None, job: str) -> str:
    """The folder of ``job``'s checkout under ``reference_dir``; ValueError naming it when it is missing."""
    if not reference_dir:
        raise ValueError(f"job {job!r} needs --reference-dir (the folder holding {CHECKOUTS[job]}/)")
    path = os.path.join(reference_dir, CHECKOUTS[job])
    if not os.path.isdir(path):
        raise ValueError(f"job {job!r}: checkout {path} is missing")
    return path


def checkout_commit(path: str) -> str:
    """The commit of a checkout: ``git rev-parse HEAD``, or the hash in ``.peer_commit`` (an exported tree)."""
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and len(out.stdout.strip()) == 40:
            return out.stdout.strip()
    except OSError:
        pass
    marker = os.path.join(path, ".peer_commit")
    return open(marker).read().strip() if os.path.exists(marker) else "unknown"


def cnn_zoo_weights(batch: int, gen):
    """Random-normal CNN-zoo weights (conv 1->16, 16->16, 16->16 3x3, dense 16->10, biases) in the layout of the
    authors' ``ZooDataset``: weights [B, 1, out, in, (kh, kw)], biases [B, 1, out]."""
    import torch

    r = functools.partial(torch.randn, generator=gen)
    ws = [r(batch, 1, 16, 1, 3, 3), r(batch, 1, 16, 16, 3, 3), r(batch, 1, 16, 16, 3, 3), r(batch, 1, 10, 16)]
    bs = [r(batch, 1, 16), r(batch, 1, 16), r(batch, 1, 16), r(batch, 1, 10)]
    return ws, bs


def build_cnn_nfn(job: str, root: str, batch: int, gen):
    """(model, forward) of one of the authors' CNN-zoo generalisation predictors in its published configuration."""
    sys.path.insert(0, os.path.join(root, "experiments", "perceiver-pytorch"))
    sys.path.insert(0, root)
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat

    ws, bs = cnn_zoo_weights(batch, gen)
    params = WeightSpaceFeatures(ws, bs)
    spec = network_spec_from_wsfeat(params)
    if job == "magep":
        from experiments.models import HNPSMixer_Inv, MlpHead

        head = functools.partial(MlpHead, sigmoid=True, num_out=1, lnorm=False, pool_mode="Mixer", h_size=500,
                                 dropout=0)
        model = HNPSMixer_Inv(spec, hchannels=[20, 20], head_cls=head, mode="HNPSMixerInv", model_type="relu",
                              feature_dropout=0.0, normalize=False, lnorm=None, hnps_dim=[20, 20],
                              init_type="xavier_normal", append_stats=False)
        config = "HNPSMixer_Inv hnps_dim=[20,20] relu, Mixer-pool MLP head h=500 (mixer_inv_no_pool.yaml)"
    elif job == "monomial":
        from experiments.models import InvariantNFN, MlpHead

        head = functools.partial(MlpHead, sigmoid=True, num_out=1, lnorm=False, pool_mode="HNPS_param_mul_L2",
                                 h_size=200, dropout=0)
        model = InvariantNFN(spec, hchannels=[16, 16, 5], head_cls=head, mode="HNPS", feature_dropout=0.0,
                             normalize=False, lnorm=None, init_type="xavier_normal", append_stats=False)
        config = "InvariantNFN mode=HNPS hchannels=[16,16,5], HNPS_param_mul_L2 pool MLP head h=200 (hnps_inv.yaml)"
    else:
        from experiments.models import InvariantNFN, MlpHead

        head = functools.partial(MlpHead, sigmoid=True, num_out=1, lnorm=False, pool_mode="HNP", h_size=1000,
                                 dropout=0)
        mode, normalize = ("HNP", False) if job == "nfn_hnp" else ("NP-PosEmb", True)
        model = InvariantNFN(spec, hchannels=[16, 16, 5], head_cls=head, mode=mode, feature_dropout=0.0,
                             normalize=normalize, lnorm=None, append_stats=False)
        if normalize:  # np_inv.yaml normalises; the batch's statistics stand in for the training set's
            model.set_stats(([(w.mean(0), w.std(0)) for w in ws], [(b.mean(0), b.std(0)) for b in bs]))
        config = (f"InvariantNFN mode={mode} hchannels=[16,16,5]{' normalize' if normalize else ''}, HNP pool "
                  f"MLP head h=1000 ({'hnp_inv' if job == 'nfn_hnp' else 'np_inv'}.yaml)")
    return model, lambda: model(params).reshape(batch), config


def build_tnfn(root: str, batch: int, gen):
    """(model, forward) of the authors' Transformer-NFN invariant predictor on the MNIST small-transformer zoo
    (D=32, 2 heads, Dk=Dv=16, DA=64, 2 blocks; embedding conv 544 numbers, classifier 32-32-10 1,386 numbers)."""
    import torch

    sys.path.insert(0, root)
    from nfn_transformer.common.weight_space import (AttentionWeightSpaceFeatures, LinearWeightSpaceFeatures,
                                                     attention_network_spec_from_wsfeat, network_spec_from_wsfeat)
    from nfn_transformer.model import InvariantNFN

    d, h, dk, dv, da, blocks = 32, 2, 16, 16, 64, 2
    r = functools.partial(torch.randn, generator=gen)
    rep = lambda *shape: [r(batch, 1, *shape) for _ in range(blocks)]
    encoder = AttentionWeightSpaceFeatures(W_q=rep(h, d, dk), W_k=rep(h, d, dk), W_v=rep(h, d, dv),
                                           W_o=rep(h, dv, d), W_A=rep(d, da), W_B=rep(da, d), b_A=rep(da),
                                           b_B=rep(d))
    embedding = {"weight": [r(batch, 1, 32, 1, 4, 4)], "bias": [r(batch, 1, 32)]}
    classifier = LinearWeightSpaceFeatures([r(batch, 1, 32, 32), r(batch, 1, 10, 32)],
                                           [r(batch, 1, 32), r(batch, 1, 10)])
    model = InvariantNFN(
        embedding_network_spec=network_spec_from_wsfeat(
            LinearWeightSpaceFeatures(embedding["weight"], embedding["bias"]), set_all_dims=True),
        classifier_network_spec=network_spec_from_wsfeat(classifier, set_all_dims=True),
        encoder_network_spec=attention_network_spec_from_wsfeat(encoder, set_all_dims=True),
        classifier_nfn_channels=[10, 10], transformers_nfn_channels=[10], num_out_classify=10,
        num_out_embedding=10, num_out_encoder=10, init_type="xavier_normal", enc_mode="inv", cls_mode="mlp",
        emb_mode="mlp")
    config = ("InvariantNFN enc_mode=inv, cls_mode=mlp [10,10], emb_mode=mlp, xavier_normal (README flags); zoo "
              "D=32 h=2 Dk=Dv=16 DA=64 2 blocks")
    return model, lambda: model(embedding, classifier, encoder).reshape(batch), config


def nfn_calls(args):
    """(forward, fwdbwd, info) of an NFN job: the model's forward on the job's batch (autograd as the caller
    leaves it), forward + BCE against random targets + backward over all parameters, and the job's description."""
    import torch

    root = checkout(args.reference_dir, args.job)
    gen = torch.Generator().manual_seed(0)
    if args.job == "tnfn":
        model, forward, config = build_tnfn(root, args.batch, gen)
    else:
        model, forward, config = build_cnn_nfn(args.job, root, args.batch, gen)
    target = torch.rand(args.batch, generator=gen)
    bce = torch.nn.BCELoss()

    def fwdbwd():
        model.zero_grad(set_to_none=True)
        loss = bce(forward(), target)
        loss.backward()
        return loss

    info = dict(config=config, repo=CHECKOUTS[args.job], commit=checkout_commit(root),
                n_params=sum(q.numel() for q in model.parameters() if q.requires_grad))
    return forward, fwdbwd, info


def build_nfn_job(args):
    """(call, info) of an NFN job: the forward under ``torch.no_grad()``, or forward + BCE + backward."""
    import torch

    forward, fwdbwd, info = nfn_calls(args)

    def fwd():
        with torch.no_grad():
            return forward()

    return (fwd if args.mode == "fwd" else fwdbwd), info


def count_nfn_flops(args) -> dict:
    """The matrix-product FLOPs of one call of an NFN job as torch counts them (``FlopCounterMode``: matrix
    products, batched products, convolutions and their gradients; elementwise work is not counted), after one call
    uncounted: ``{flops, flops_by_op: {aten op: FLOPs}, **info}``. The forward is counted with autograd on (the
    counter's module tracker needs it for some models; the same products as under ``no_grad``)."""
    from torch.utils.flop_counter import FlopCounterMode

    forward, fwdbwd, info = nfn_calls(args)
    call = forward if args.mode == "fwd" else fwdbwd
    call()
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return dict(info, flops=int(counter.get_total_flops()), flops_by_op=by_op)


def build_tsw_job(args):
    """(call, info) of a TSW / SW job: the distance, or distance + gradient w.r.t. Y."""
    import importlib.util

    if args.job == "pot" and importlib.util.find_spec("torch") is None:
        return build_pot_numpy(args)
    import torch

    gen = torch.Generator().manual_seed(0)
    n, d, trees, lines, p = args.n, args.d, args.trees, args.lines, args.p
    x = torch.randn(n, d, generator=gen)
    y = (torch.randn(n, d, generator=gen) + 0.5).requires_grad_(True)
    mean_x = x.mean(dim=0, keepdim=True)
    info = {}
    if args.job == "tsw_chain":
        root = checkout(args.reference_dir, args.job)
        sys.path.insert(0, os.path.join(root, "src"))
        from tree_sliced.tsw_chain import TSWChain

        # chain frames as the authors' gradient-flow experiment draws them
        origin = torch.randn(trees, 1, d, generator=gen) * 0.1 + mean_x
        theta = torch.randn(trees, lines, d, generator=gen)
        theta = theta / torch.norm(theta, dim=-1, keepdim=True)
        source = 0.2 * torch.rand(trees, lines - 1, generator=gen) - 0.1
        bias = torch.cumsum(torch.einsum("tld,tl->tld", theta[:, :lines - 1], source), dim=1) + origin
        intercept = torch.cat((origin, bias), dim=1)
        ends = torch.cat((bias, torch.zeros(trees, 1, d)), dim=1)
        tsw = TSWChain(nofprojections=trees, nlines=lines, p=p, delta=2, mass_division="uniform", device="cpu")
        call = lambda: tsw(x, y, theta, intercept, ends)  # noqa: E731
        info["config"] = f"TSWChain mass_division=uniform p={p}, chain frames (root std 0.1, offsets U(-0.1, 0.1))"
    elif args.job in ("dbtsw", "dbtsw_compiled"):
        root = checkout(args.reference_dir, args.job)
        sys.path.insert(0, root)
        from db_tsw.db_tsw import DbTSW
        from db_tsw.utils import generate_trees_frames

        torch.manual_seed(1)
        theta, intercept = generate_trees_frames(trees, lines, d, mean=mean_x, std=0.1, device="cpu",
                                                 gen_mode="gaussian_raw")
        dbtsw = DbTSW(p=p, delta=2, device="cpu")
        if args.job == "dbtsw_compiled":
            dbtsw = torch.compile(dbtsw)  # the authors' README recommends it
        call = lambda: dbtsw(x, y, theta, intercept)  # noqa: E731
        info["config"] = (f"DbTSW p={p} delta=2, gaussian_raw frames std 0.1, "
                          f"{'torch.compile' if args.job == 'dbtsw_compiled' else 'eager'}")
    else:
        import ot

        projections = ot.sliced.get_random_projections(d, trees * lines, seed=0,
                                                        backend=ot.backend.TorchBackend(), type_as=x)
        call = lambda: ot.sliced_wasserstein_distance(x, y, n_projections=trees * lines, p=p,  # noqa: E731
                                                      projections=projections)
        info.update(config=f"ot.sliced_wasserstein_distance, torch backend, {trees * lines} projections drawn once",
                    pot=ot.__version__)
    if args.job != "pot":
        info.update(repo=CHECKOUTS[args.job], commit=checkout_commit(checkout(args.reference_dir, args.job)))

    def fwd():
        with torch.no_grad():
            return call()

    def fwdbwd():
        y.grad = None
        value = call()
        value.backward()
        return value

    return (fwd if args.mode == "fwd" else fwdbwd), info


def build_pot_numpy(args):
    """(call, info) of POT's sliced Wasserstein on its numpy backend: value only (no gradient)."""
    import numpy as np
    import ot

    if args.mode != "fwd":
        raise ValueError("POT's numpy backend has no gradient: run the pot fwdbwd job with a torch Python")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d)).astype(np.float32)
    y = (rng.standard_normal((args.n, args.d)) + 0.5).astype(np.float32)
    projections = ot.sliced.get_random_projections(args.d, args.trees * args.lines, seed=0)
    call = lambda: ot.sliced_wasserstein_distance(x, y, n_projections=args.trees * args.lines,  # noqa: E731
                                                  p=args.p, projections=projections)
    return call, dict(config=f"ot.sliced_wasserstein_distance, numpy backend, {args.trees * args.lines} "
                             "projections drawn once", pot=ot.__version__)


def main(argv=None) -> dict:
    count = ("--count-flops", "count the NFN job's matrix-product FLOPs (one untimed call) instead of timing it")
    args = protocol.job_arguments(__doc__.splitlines()[0], JOBS, argv, flags=(count,))
    record = protocol.base_record(args)
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        record.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        record["torch"] = None
    if args.count_flops:
        if args.job not in NFN_JOBS:
            raise ValueError(f"--count-flops counts the NFN jobs {NFN_JOBS}, got --job {args.job!r}")
        return protocol.emit(dict(record, status="counted", **count_nfn_flops(args)))
    build = build_nfn_job if args.job in NFN_JOBS else build_tsw_job
    return protocol.measure(record, lambda: build(args), args.repeats)


if __name__ == "__main__":
    main()
