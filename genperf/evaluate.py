"""python -m genperf.evaluate RUN_DIR: a trained run's metrics again, with as many samples as wanted;
prints them and writes RUN_DIR/eval.json (or --json FILE).

- each family's likelihoods (genperf.families: Family.likelihood), averaged over K draws (--samples; the
  family's default): bits_per_dim (realnvp, K dequantization draws, default 4) with its standard error over
  images and the standard deviation between draws; elbo and nll (vae, beta-vae, nats per image, K posterior
  draws, default 100): the ELBO at beta = 1 (analytic KL) and the importance-sampled negative
  log-likelihood (Burda et al.), a tighter bound. Draw 0 uses the noise of the training log's held-out
  evaluation, so for the same checkpoint `bits_per_dim_draw0` and `elbo_draw0` are the figures the log shows.
- classifier_fid (image models on labelled data: mnist, fashion-mnist, digits): the Frechet distance
  between --fid-samples real and generated images in the 128 features of a small CNN trained on the
  data set itself (accuracy reported beside it). It is not Inception FID: compare it only between runs
  scored by the same classifier, which is kept beside the run folder (RUNS/classifier-DATA-CxS.pt).
- inception_fid: the standard FID through torchmetrics, given the FID Inception weights as a local
  file (--inception-weights); genperf never downloads them.
- mode_coverage (GANs on the 2-D mixtures): modes covered and the fraction of high-quality samples.

GANs trained with --ema are scored with the averaged generator."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from genperf.errors import GenperfError, os_error_line
from genperf.families import FAMILIES

SAMPLE_METRICS = ("classifier_fid", "inception_fid", "mode_coverage")  # of generated samples, any family
METRICS = tuple(m for f in FAMILIES for m in f.likelihood_metrics) + SAMPLE_METRICS


def applicable(run, data):
    """The metrics that apply to `run`, and for the others why not."""
    ok, why = [], {}
    for name in METRICS:
        owner = next((f for f in FAMILIES if name in f.likelihood_metrics), None)
        if owner is not None and owner is not run.family:
            why[name] = f"a likelihood of {' / '.join(owner.models)} only"
        elif name == "mode_coverage" and run.is_image:
            why[name] = "for the 2-D mixtures only"
        elif name in ("classifier_fid", "inception_fid") and not run.is_image:
            why[name] = "for image data only"
        elif name == "classifier_fid" and data.labels is None:
            why[name] = f"{data.name} has no class labels to train the feature classifier on"
        else:
            ok.append(name)
    return ok, why


def split_batches(run, source):
    from genperf.data import default_loader, make_batches

    return make_batches(
        source,
        run.config.batch_size,
        0,
        0,
        1,
        run.device,
        shuffle=False,
        drop_last=False,
        loader=default_loader(run.config.data),
        workers=run.config.workers,
    )


def generated(run, n, seed):
    return run.decode(run.latents(n, seed)).cpu()


def real_images(source, n):
    """The first n images of a split as float [0, 1] on the CPU."""
    if torch.is_tensor(source):
        x = source[:n]
        return x.float() / 255 if x.dtype == torch.uint8 else x.float()
    images = (source[i] for i in range(min(n, len(source))))  # file-based (CelebA): None for an unreadable file
    return torch.stack([x for x in images if x is not None]).float()


def evaluate_run(
    run,
    split="heldout",
    samples=None,
    metrics=None,
    fid_samples=10000,
    seed=0,
    classifier_path=None,
    inception_weights=None,
    progress=False,
):
    """The metrics of a loaded run (genperf.load) as a flat dict; see the module's doc for each."""
    from genperf import metrics as M

    data = run.data()
    ok, why = applicable(run, data)
    wanted = list(metrics) if metrics else [m for m in ok if m != "inception_fid" or inception_weights]
    for name in wanted:
        if name not in ok:
            raise GenperfError(f"--metrics {name} does not apply to this run: {why[name]}")
    samples = samples or run.family.default_samples
    out = {
        "run": run.path,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "model": run.config.model,
        "data": run.config.data,
        "split": split,
        "skipped": {m: r for m, r in why.items() if run.is_image and m in ("classifier_fid", "inception_fid")},
    }
    if "inception_fid" in ok and "inception_fid" not in wanted:
        out["skipped"]["inception_fid"] = "needs --inception-weights (the FID Inception weights as a local file)"
    source = data.heldout if split == "heldout" else data.train
    likelihoods = [m for m in wanted if m in run.family.likelihood_metrics]
    if likelihoods:
        out.update(run.family.likelihood(run, split_batches(run, source), samples, likelihoods, progress))
    if {"classifier_fid", "inception_fid"} & set(wanted):
        real = real_images(source, fid_samples)
        fake = generated(run, len(real), seed)
        out["fid_samples"] = len(real)
        if "classifier_fid" in wanted:
            path = classifier_path or default_classifier_path(run)
            classifier, accuracy = M.cached_classifier(path, data)
            out["classifier_fid"] = M.classifier_fid(classifier, real, fake)
            out["classifier_accuracy"], out["classifier"] = accuracy, path
        if "inception_fid" in wanted:
            out["inception_fid"] = M.inception_fid(real, fake, inception_weights)
    if "mode_coverage" in wanted:
        out.update(M.mode_coverage(generated(run, 2500, seed), run.config.data))
        out["coverage_samples"] = 2500
    return out


def default_classifier_path(run):
    c, h = run.data_shape[0], run.data_shape[-1]
    return os.path.join(os.path.dirname(os.path.abspath(run.path)), f"classifier-{run.config.data}-{c}x{h}.pt")


def summary_lines(result):
    lines = [f"{result['model']} on {result['data']} ({result['split']}), step {result['step']} of {result['run']}"]
    for family in FAMILIES:
        if family.summary and any(m in result for m in family.likelihood_metrics):
            lines += family.summary(result)
    if "classifier_fid" in result:
        lines.append(
            f"  classifier FID  {result['classifier_fid']:.4f} ({result['fid_samples']} images; "
            f"classifier accuracy {result['classifier_accuracy']:.3f})"
        )
    if "inception_fid" in result:
        lines.append(f"  Inception FID   {result['inception_fid']:.3f} ({result['fid_samples']} images)")
    if "modes_covered" in result:
        lines.append(
            f"  modes covered   {result['modes_covered']}/{result['modes']}, "
            f"high quality {100 * result['high_quality']:.1f}%"
        )
    lines += [f"  not computed: {name} ({reason})" for name, reason in result["skipped"].items()]
    return lines


def main(argv=None):
    from genperf.faults import usable_compile_cache
    from genperf.run import load_run
    from genperf.runlog import atomic_write_text

    p = argparse.ArgumentParser(
        prog="python -m genperf.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by python -m genperf.train")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument(
        "--samples",
        type=int,
        help="K: dequantization draws (realnvp, default 4) or posterior / importance samples (vae, default 100)",
    )
    p.add_argument("--metrics", nargs="+", choices=METRICS, help="what to compute (default: all that apply)")
    p.add_argument(
        "--fid-samples",
        type=int,
        default=10000,
        help="real and generated images for FID (default 10000, at most the split's size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default 0)")
    p.add_argument("--checkpoint", help="a checkpoint.pt or sharded checkpoint folder (default: the run's latest)")
    p.add_argument(
        "--data-root",
        help="where the run's data set is now, if it moved since training (checked to be the same data by its content)",
    )
    p.add_argument("--classifier", help="feature classifier file for classifier FID (default: beside the run folder)")
    p.add_argument("--inception-weights", help="the FID Inception weights file (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--json", help="where to write the results (default RUN_DIR/eval.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for name in ("samples", "fid_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    usable_compile_cache("genperf.evaluate")
    try:
        run = load_run(args.run, args.device, args.checkpoint, args.data_root)
        result = evaluate_run(
            run,
            args.split,
            args.samples,
            args.metrics,
            args.fid_samples,
            args.seed,
            args.classifier,
            args.inception_weights,
            progress=True,
        )
    except (GenperfError, OSError) as e:
        print(
            f"genperf.evaluate: error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr, flush=True
        )
        return 2
    # The results first: a long evaluation is never lost to a file that cannot be written.
    print("\n".join(summary_lines(result)), flush=True)
    path = args.json or os.path.join(args.run, "eval.json")
    try:
        atomic_write_text(json.dumps(result, indent=2) + "\n", path)
    except GenperfError as e:
        print(f"genperf.evaluate: error: {e}; the results are printed above", file=sys.stderr, flush=True)
        return 2
    print(f"-> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
