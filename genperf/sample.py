"""python -m genperf.sample RUN_DIR: images (or 2-D points) from a trained run.

Latents are drawn on the CPU from --seed, so a seed gives the same samples on every device, and
scaled by --temperature (latents from N(0, T^2 I); T < 1 trades diversity for fidelity). Writes one
grid (--grid FILE, default RUN_DIR/samples/sample_seedS_tT.png) or single PNGs (--out DIR). With
--interpolate each of --n rows walks along a great circle (slerp) between two latents in --steps images."""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from genperf.errors import GenperfError, os_error_line


def slerp(a, b, t):
    """Spherical interpolation per row, the path a Gaussian latent's norm stays typical on."""
    a_f, b_f = a.flatten(1), b.flatten(1)
    omega = torch.acos((a_f * b_f).sum(1) / (a_f.norm(dim=1) * b_f.norm(dim=1))).clamp(1e-6, math.pi - 1e-6)
    t = t.to(a_f.dtype)
    w_a, w_b = torch.sin((1 - t) * omega) / torch.sin(omega), torch.sin(t * omega) / torch.sin(omega)
    return (w_a[:, None] * a_f + w_b[:, None] * b_f).view_as(a)


def interpolation_latents(run, rows, steps, seed=0, temperature=1.0):
    """rows x steps latents: row i runs from one prior draw to another along slerp."""
    ends = run.latents(2 * rows, seed, temperature)
    t = torch.linspace(0, 1, steps, device=ends.device)
    paths = [
        slerp(
            ends[2 * i : 2 * i + 1].expand(steps, *ends.shape[1:]),
            ends[2 * i + 1 : 2 * i + 2].expand(steps, *ends.shape[1:]),
            t,
        )
        for i in range(rows)
    ]
    return torch.cat(paths)


def write_points(points, path):
    from genperf.runlog import atomic_write_text

    atomic_write_text("x,y\n" + "".join(f"{x:.6g},{y:.6g}\n" for x, y in points.tolist()), path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m genperf.sample", description=__doc__.split("\n")[0])
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by python -m genperf.train")
    p.add_argument("--n", type=int, help="samples (default 64), or with --interpolate rows (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="latent standard deviation (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--grid", help="one grid PNG (2-D data: a scatter plot) (default RUN_DIR/samples/...)")
    where.add_argument("--out", help="a folder of single PNGs 000000.png, ... (2-D data: points.csv)")
    p.add_argument("--nrow", type=int, help="images per grid row (default: a square grid; --steps with --interpolate)")
    p.add_argument("--checkpoint", help="a checkpoint.pt or sharded checkpoint folder (default: the run's latest)")
    p.add_argument("--interpolate", action="store_true", help="rows of spherical interpolations between latents")
    p.add_argument("--steps", type=int, default=10, help="images per interpolation row (default 10)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 8 if args.interpolate else 64
    for name in ("n", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.temperature <= 0:
        p.error("--temperature must be > 0")
    return args


def main(argv=None):
    from genperf.faults import usable_compile_cache
    from genperf.run import load_run
    from genperf.runlog import image_grid, save_figure, save_png, scatter

    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    usable_compile_cache("genperf.sample")
    try:
        run = load_run(args.run, args.device, args.checkpoint)
        points = not run.is_image
        if args.interpolate and points:
            raise GenperfError("--interpolate draws images; this run generates 2-D points")
        if args.interpolate:
            z = interpolation_latents(run, args.n, args.steps, args.seed, args.temperature)
        else:
            z = run.latents(args.n, args.seed, args.temperature)
        samples = run.decode(z).cpu()
        what = f"{len(samples)} {'points' if points else 'images'} from step {run.step} of {args.run}"
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            if points:
                write_points(samples, os.path.join(args.out, "points.csv"))
            else:
                for i, image in enumerate(samples):
                    save_png(image, os.path.join(args.out, f"{i:06d}.png"))
            print(f"genperf.sample: {what} -> {args.out}", flush=True)
            return 0
        kind = "interpolation" if args.interpolate else "sample"
        grid = args.grid or os.path.join(args.run, "samples", f"{kind}_seed{args.seed}_t{args.temperature:g}.png")
        os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
        if points:
            fig = scatter(samples, run.data().heldout[:2000], f"step {run.step}, T={args.temperature:g}")
            save_figure(fig, grid)
        else:
            nrow = args.nrow or (args.steps if args.interpolate else math.ceil(math.sqrt(len(samples))))
            save_png(image_grid(samples, nrow), grid)
        print(f"genperf.sample: {what} -> {grid}", flush=True)
        return 0
    except (GenperfError, OSError) as e:  # OSError: a folder that cannot be made (--out naming a file, say)
        print(
            f"genperf.sample: error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr, flush=True
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
