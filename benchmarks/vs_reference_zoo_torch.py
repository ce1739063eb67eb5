"""Zoo generation as users did it before: the Small CNN Zoo recipe and a SIREN fit in plain PyTorch, one model
at a time (a job of ``benchmarks.vs_reference``, run with the reference Python that has torch).

    REF_PY -m benchmarks.vs_reference_zoo_torch --job torch_cnn_zoo --steps 4 --mode train --threads 2
    REF_PY -m benchmarks.vs_reference_zoo_torch --job torch_siren --steps 20 --mode train --threads 2

The recipes as `magep.zoo_recipes` states them (docs/magep.md §10), written the plain way: an ``nn.Module``, one
model, a Python loop of optimizer steps.
CNN: 3 x Conv2d(3x3, 16, stride 2, no padding) + ReLU + Dropout(0.3), global average pool, Linear(16, 10);
cross-entropy + L2 penalty (1e-4 x the squared kernels); Adam(lr 1e-3, eps 1e-7); batch 512 of 28 x 28 x 1
inputs (random values in [-1, 1] and random labels: the step's cost does not depend on them).
SIREN: 2 -> 32 -> 32 -> 1 with sin(30 x), the full 28 x 28 coordinate grid per step, MSE, Adam(lr 5e-5).
One timed call = ``--steps`` optimizer steps; ``model_step_s`` = median call / steps.
"""
from __future__ import annotations

from benchmarks import vs_reference_protocol as protocol

JOBS = ("torch_cnn_zoo", "torch_siren")
CNN_BATCH = 512
SIREN_W0 = 30.0


def cnn_step(steps: int):
    """(call, info): ``steps`` Adam steps of one Small-CNN-Zoo network at batch 512."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    layers = []
    for c_in in (1, 16, 16):
        layers += [nn.Conv2d(c_in, 16, 3, stride=2), nn.ReLU(), nn.Dropout(0.3)]
    body = nn.Sequential(*layers)
    head = nn.Linear(16, 10)
    params = list(body.parameters()) + list(head.parameters())
    kernels = [m.weight for m in body if isinstance(m, nn.Conv2d)] + [head.weight]
    optimizer = torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    x = torch.rand(CNN_BATCH, 1, 28, 28, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (CNN_BATCH,), generator=gen)

    def call():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = head(body(x).mean(dim=(2, 3)))
            loss = nn.functional.cross_entropy(logits, y) + 1e-4 * sum((w ** 2).sum() for w in kernels)
            loss.backward()
            optimizer.step()
        return loss.detach()

    return call, dict(config=f"plain PyTorch Small CNN Zoo step (3 conv 3x3/2 + ReLU + dropout 0.3, GAP, dense 10; "
                             f"CE + L2; Adam) at batch {CNN_BATCH}, one model, {steps} steps per call",
                      n_params=sum(p.numel() for p in params))


class Siren:
    """2 -> 32 -> 32 -> 1 SIREN (sin(w0 x) after every layer but the last) with the SIREN initialisation."""

    def __init__(self, gen):
        import math

        import torch

        self.weights, self.biases = [], []
        for i, (n_in, n_out) in enumerate(((2, 32), (32, 32), (32, 1))):
            bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / SIREN_W0
            self.weights.append(((torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound).requires_grad_(True))
            b = 1.0 / math.sqrt(n_in)
            self.biases.append(((torch.rand(n_out, generator=gen) * 2 - 1) * b).requires_grad_(True))

    def parameters(self):
        return self.weights + self.biases

    def __call__(self, coords):
        import torch

        h = coords
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            if i < len(self.weights) - 1:
                h = torch.sin(SIREN_W0 * h)
        return h


def siren_step(steps: int):
    """(call, info): ``steps`` full-grid Adam steps of one SIREN fit of a 28 x 28 image."""
    import torch

    gen = torch.Generator().manual_seed(0)
    axis = torch.linspace(-1, 1, 28)
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    target = torch.rand(28 * 28, 1, generator=gen) * 2 - 1
    model = Siren(gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)

    def call():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = ((model(coords) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
        return loss.detach()

    return call, dict(config=f"plain PyTorch SIREN fit (2-32-32-1, w0 30, 784-pixel grid, MSE, Adam lr 5e-5), "
                             f"one image, {steps} steps per call",
                      n_params=sum(p.numel() for p in model.parameters()))


def main(argv=None) -> dict:
    args = protocol.job_arguments(__doc__.splitlines()[0], JOBS, argv)
    record = protocol.base_record(args)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record.update(torch=torch.__version__, threads=torch.get_num_threads(), models=1)
    build = cnn_step if args.job == "torch_cnn_zoo" else siren_step
    return protocol.measure(record, lambda: build(args.steps), args.repeats)


if __name__ == "__main__":
    main()
