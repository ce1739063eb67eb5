"""Colour-transfer demo: palettes flowed with SW and TSW-SL, images side by side, palette W_2^2 and time.

The source and target images are reduced to palettes of K colours by k-means (scikit-learn, fitted on a random
subset of pixels, ``palette``); `tsw_sl.colour_transfer` flows the source palette and recolours the image.

``python -m benchmarks.tsw_colour_transfer [--settings library|authors] [--quick] [--out DIR]
[--source pot/ocean_day.jpg] [--target ...]`` writes DIR/<stem>.json, .md and .png (source, target, one
recoloured image per method, W_2^2 curves); <stem> is ``tsw_colour_transfer`` for the library profile and
``tsw_colour_transfer_authors`` for the authors' one.

Settings profiles (docs/tsw_sl.md §13.1):

* ``library`` (default): `tsw_sl.colour_transfer`: colours in [0, 1], plain Euler steps on the distance, the
  TSW-SL paper's steps (SW 1, TSW-SL 16), SW L = 100 (p = 2) against chain TSW-SL 25 x 4 (p = 1, uniform).
* ``authors``: the Db-TSW authors' colour-transfer code (`benchmarks.tsw_authors.transfer_palette`): colours
  at 0..255, SGD on n sqrt(D) with the palette clipped at 0, SW L = 100 at step 1, TSW-SL (concurrent trees,
  uniform splitting) and Db-TSW (distance splitting, delta = 1) on 33 trees of 3 lines, roots N(target
  palette mean, I), p = 2, step 11.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from benchmarks import harness
from benchmarks import tsw_authors as authors
from benchmarks import tsw_report as report
from common.cli import positive_int
from common.data import load_image
from tsw_sl import colour_transfer as ct


def palette(key, pixels, n_colours, n_fit=20_000):
    """K-means palette of an image.

    Args:
      key: PRNG key (pixel subset and k-means initialisation).
      pixels: [P, 3] colours in [0, 1].
      n_colours: K; n_fit: number of random pixels the k-means is fitted on (all if P is smaller).
    Returns:
      (centres float32 [K, 3], labels int [P]: each pixel's nearest centre).
    """
    pixels = np.asarray(pixels, np.float32)
    k_sub, k_init = jax.random.split(key)
    subset = np.asarray(jax.random.permutation(k_sub, len(pixels)))[:n_fit]
    seed = int(jax.random.randint(k_init, (), 0, 2**31 - 1))
    km = KMeans(n_clusters=n_colours, n_init=1, max_iter=100, random_state=seed).fit(pixels[subset])
    return km.cluster_centers_.astype(np.float32), km.predict(pixels)


def _library_flow(key, source, target, method, n_steps):
    return ct.transfer_palette(key, source, target, method, n_steps, ct.PAPER_STEP[method])


PROFILES = {  # settings profile -> (methods and their step sizes, palette flow (key, source, target, method, steps))
    "library": (ct.PAPER_STEP, _library_flow),
    "authors": (authors.COLOUR_STEP, authors.transfer_palette),
}
STEMS = {"library": "tsw_colour_transfer", "authors": "tsw_colour_transfer_authors"}
SETTINGS_TEXT = {
    "library": "SW L = 100 (p = 2); TSW-SL chain L = 25, k = 4 (p = 1, uniform splitting); colours in [0, 1], "
               "plain Euler steps on the distance",
    "authors": "the Db-TSW authors' code: colours at 0..255, SGD on n sqrt(D) clipped at 0; SW L = 100 (p = 2); "
               "TSW-SL (uniform) and Db-TSW (distance, delta = 1) on 33 concurrent trees x 3 lines, roots N(target "
               "palette mean, I), p = 2; W_2^2 reported in [0, 1] units",
}


def run_method(key, source, target, method, n_steps, profile="library"):
    """Flows the palette with `profile`'s flow; returns (snapshots [S, K, 3], seconds of the compiled flow,
    seconds of the first call, which compiles and runs it)."""
    flow = PROFILES[profile][1]
    start = time.perf_counter()
    jax.block_until_ready(flow(key, source, target, method, n_steps))
    second = time.perf_counter()
    snaps = np.asarray(flow(key, source, target, method, n_steps))
    return snaps, time.perf_counter() - second, second - start


def figure(images, titles, curves, path, width=360):
    """Images side by side (each subsampled to about `width` pixels wide) plus the palette W_2^2 curves."""
    fig, axes = harness.subplots(1, len(images) + 1, figsize=(3.2 * (len(images) + 1), 2.6))
    for ax, img, title in zip(axes, images, titles):
        stride = max(img.shape[1] // width, 1)
        ax.imshow(img[::stride, ::stride])
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for label, (steps, w2) in curves.items():
        axes[-1].plot(steps, w2, label=label)
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("Euler step")
    axes[-1].set_title("palette W2^2 to target", fontsize=8)
    axes[-1].legend(fontsize=7)
    harness.save_figure(fig, path, dpi=90)


def main(argv=None):
    p = report.parser("Colour transfer with SW and TSW-SL palette flows (TSW-SL paper, sec. 6.2).")
    p.add_argument("--source", default="pot/ocean_day.jpg", help="image under images/ of the data folder")
    p.add_argument("--target", default="pot/ocean_sunset.jpg")
    p.add_argument("--colours", type=positive_int, default=None, help="palette size K (default 1000, quick 200)")
    p.add_argument("--steps", type=positive_int, default=None, help="Euler steps (default 2000, quick 500)")
    p.add_argument("--settings", choices=list(PROFILES), default="library",
                   help="settings profile: the library's (default) or the authors' code's (module docstring)")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=sorted(set(ct.PAPER_STEP) | set(authors.COLOUR_STEP)),
                   help="default: every method of the profile")
    args = report.parse_args(p, argv)
    step_sizes = PROFILES[args.settings][0]
    methods = args.methods or list(step_sizes)
    if set(methods) - set(step_sizes):
        p.error(f"--settings {args.settings} has the methods {sorted(step_sizes)}; got {methods}")
    n_colours = args.colours or (200 if args.quick else 1000)
    n_steps = args.steps or (500 if args.quick else 2000)
    stride = 4 if args.quick else 1
    key = jax.random.key(args.seed)
    k_src, k_tgt, k_flow = jax.random.split(key, 3)
    src_img = load_image(args.source, as_float=True)[::stride, ::stride]
    tgt_img = load_image(args.target, as_float=True)[::stride, ::stride]
    start = time.perf_counter()
    src_pal, labels = palette(k_src, src_img.reshape(-1, 3), n_colours)
    tgt_pal, _ = palette(k_tgt, tgt_img.reshape(-1, 3), n_colours)
    kmeans_s = time.perf_counter() - start
    results, images, curves = {}, [src_img, tgt_img], {}
    for method in tqdm(methods, desc="colour transfer"):
        step = step_sizes[method]
        snaps, seconds, first_s = run_method(k_flow, src_pal, tgt_pal, method, n_steps, args.settings)
        w2 = [report.wasserstein2_squared(s, tgt_pal) for s in snaps]
        steps = list(range(0, n_steps + 1, n_steps // (len(snaps) - 1)))
        results[method] = dict(step_size=step, w2_squared=w2, steps=steps, flow_s=seconds, first_call_s=first_s,
                               w2_ratio=w2[0] / w2[-1])
        images.append(ct.recolour(src_img, labels, snaps[-1]))
        curves[report.LABELS[method]] = (steps, w2)
    config = dict(source=args.source, target=args.target, colours=n_colours, steps=n_steps, image_stride=stride,
                  pixels=int(src_img.shape[0] * src_img.shape[1]), seed=args.seed, kmeans_s=kmeans_s,
                  profile=args.settings, settings=SETTINGS_TEXT[args.settings])
    stem = os.path.join(args.out, STEMS[args.settings])
    harness.write_json(stem + ".json", dict(config=config, results=results))
    rows = [f"| {report.LABELS[m]} | {r['step_size']:g} | {r['w2_squared'][0]:.3e} | {r['w2_squared'][-1]:.3e} | "
            f"{r['w2_ratio']:.0f}x | {r['flow_s']:.2f} | {r['first_call_s']:.1f} |" for m, r in results.items()]
    harness.write_text(stem + ".md", "\n".join([
        f"# Colour transfer: palette flows ({args.settings} settings)", "",
        f"{args.source} -> {args.target} ({config['pixels']} pixels, image stride {stride}), palettes of "
        f"{n_colours} colours by k-means (fitted on 20,000 random pixels; {kmeans_s:.1f} s for both images), "
        f"{n_steps} steps; {config['settings']}. "
        "W_2^2: exact OT between uniform palettes (POT). The paper shows images only (no numbers).", "",
        "| method | step | W_2^2 start | W_2^2 end | reduction | flow s | first call s (compile + flow) |",
        "|---|---|---|---|---|---|---|",
        *rows, "", f"![colour transfer]({STEMS[args.settings]}.png)", ""]))
    figure(images, ["source", "target"] + [f"{report.LABELS[m]}" for m in results], curves, stem + ".png")
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
