"""python -m genperf.study EXPERIMENT --out DIR [--quick]: the study's experiments, reproduced.

Each experiment trains what it needs with genperf.train (or reuses the run directories under
--runs, default DIR/runs, so experiments that share models train them once), then writes
DIR/report.md, its figures (PNG) and DIR/results.json. --quick is a CPU-sized version on the bundled
`digits` data for tests and CI; the full versions train on MNIST (--data-root).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import torch

import genperf
from genperf import checkpoint, metrics, train
from genperf.errors import GenperfError
from genperf.evaluate import evaluate_run
from genperf.runlog import pyplot, read_metrics
from genperf.sample import slerp

# Training budgets per model: (quick on digits, full on MNIST). Epochs unless noted.
QUICK_EPOCHS, FULL_EPOCHS = 3, 20
REALNVP_FULL = ["--mid-channels", "16", "--num-blocks", "2", "--amp"]  # 0.32M parameters: CPU-sized
REALNVP_QUICK = ["--mid-channels", "8", "--num-blocks", "1"]


class Study:
    def __init__(self, args):
        self.quick, self.out = args.quick, args.out
        self.runs = args.runs or os.path.join(args.out, "runs")
        self.data = ["--data", "digits"] if args.quick else ["--data", args.data, "--data-root", args.data_root]
        self.device = args.device
        self.inception_weights = args.inception_weights
        self.lines, self.results = [], {}
        os.makedirs(self.out, exist_ok=True)

    # ---- training and loading ----
    def _train(self, name, model, options):
        """python -m genperf.train MODEL into RUNS/name, resuming what is there."""
        out = os.path.join(self.runs, name)
        argv = [model, *self.data, "--out", out, "--device", self.device, "--log-every", "5", *options]
        if checkpoint.find(out):
            argv.append("--resume")  # an interrupted study picks up where it stopped
        print(f"genperf.study: training {name}: python -m genperf.train {' '.join(argv)}", flush=True)
        if train.main(argv) != 0:
            raise GenperfError(f"training {name} failed (see above)")
        return out

    def train(self, name, model, *options):
        """The run directory RUNS/name, trained unless it already finished (summary.json present)."""
        out = os.path.join(self.runs, name)
        if os.path.exists(os.path.join(out, "summary.json")):
            return out
        return self._train(name, model, options)

    def train_stages(self, name, model, stages, *options):
        """Trains RUNS/name to each step count of `stages` in turn (through --resume, which continues
        bit-exactly) and keeps a copy of the checkpoint of each: [(steps, checkpoint path)]."""
        out, snapshots = os.path.join(self.runs, name), []
        for steps in stages:
            snapshot = os.path.join(out, f"checkpoint-step{steps:06d}.pt")
            if not os.path.exists(snapshot):
                self._train(name, model, ["--steps", str(steps), *options])
                shutil.copyfile(os.path.join(out, checkpoint.CHECKPOINT), snapshot)
            snapshots.append((steps, snapshot))
        return snapshots

    def realnvp(self):
        return REALNVP_QUICK if self.quick else REALNVP_FULL

    # The runs several experiments share, spelled once so that a reused run is the one asked for.
    def dcgan(self):
        return self.train("dcgan", "dcgan", *self.epochs())

    def vae(self):
        return self.train("vae-beta1", "vae", "--beta", "1", *self.epochs())

    def family_runs(self):
        """A DCGAN, a VAE and a RealNVP."""
        return {"DCGAN": self.dcgan(), "VAE": self.vae(),
                "RealNVP": self.train("realnvp", "realnvp", *self.realnvp(), *self.epochs())}

    def epochs(self, quick=QUICK_EPOCHS, full=FULL_EPOCHS):
        return ["--epochs", str(quick if self.quick else full)]

    def load(self, run, checkpoint=None):
        return genperf.load(run, self.device, checkpoint)

    # ---- report ----
    def say(self, text=""):
        self.lines.append(text)

    def figure(self, fig, name, caption):
        path = os.path.join(self.out, name)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        pyplot().close(fig)
        self.say(f"![{caption}]({name})\n\n*{caption}*\n")
        return path

    def write(self, experiment, seconds):
        self.results["wall_time_s"] = seconds
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)
        head = [f"# {experiment}{' (quick)' if self.quick else ''}", "",
                f"`python -m genperf.study {experiment} --out {self.out}{' --quick' if self.quick else ''}`: "
                f"{seconds:.0f} s on {self.device}. Runs in `{self.runs}`; numbers in `results.json`.", ""]
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write("\n".join(head + self.lines) + "\n")

def to_float(images):
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def image_grid(images, nrow):
    import torchvision

    grid = torchvision.utils.make_grid(images.float().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def show_rows(rows, row_labels, title, col_labels=None):
    """A figure of image rows (each (K, C, H, W)), one labelled row each."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * rows[0].shape[0] + 1, 1.2 * len(rows) + 0.6), squeeze=False)
    for ax, row, label in zip(axes[:, 0], rows, row_labels):
        ax.imshow(image_grid(row, len(row)), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    if col_labels:
        axes[0, 0].set_title("   ".join(col_labels), fontsize=8)
    fig.suptitle(title)
    return fig


def curves(run):
    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    return [r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "heldout"]


# ---- experiments ----

def evolution(s: Study):
    quick = s.quick
    picks = [1, 2, 3] if quick else [1, 10, 20]
    runs = s.family_runs()
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), len(picks), figsize=(3 * len(picks), 3 * len(runs)), squeeze=False)
    for i, (family, run) in enumerate(runs.items()):
        for j, epoch in enumerate(picks):
            axes[i, j].imshow(plt.imread(os.path.join(run, "samples", f"epoch_{epoch:03d}.png")), cmap="gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[0, j].set_title(f"epoch {epoch}")
        axes[i, 0].set_ylabel(family)
    s.say("Samples from the same fixed latents after each epoch shown, one family per row.\n")
    s.figure(fig, "evolution.png", "Samples over training (rows: DCGAN, VAE, RealNVP)")
    s.results = {family: {"run": run, "epochs_shown": picks,
                          "heldout": json.load(open(os.path.join(run, "summary.json")))["heldout"]}
                 for family, run in runs.items()}
    for family, r in s.results.items():
        s.say(f"- {family}: final held-out {json.dumps(r['heldout']) if r['heldout'] else 'metric: none (no likelihood)'}")


def interpolation(s: Study, steps=9):
    runs = s.family_runs()
    t = torch.linspace(0, 1, steps)
    rows, labels = [], []
    for family, run in runs.items():
        loaded = s.load(run)
        objective, data = loaded.objective, loaded.data()
        with torch.no_grad():
            if family == "DCGAN":  # latents of the prior: the generator has no encoder
                ends = objective.noise(2, torch.Generator().manual_seed(1)).to(s.device)
            else:  # two held-out images mapped to their latents
                x = to_float(data.heldout[:2]).to(s.device)
                ends = objective.model.encode(x)[0] if family == "VAE" else objective.model(x.clamp(0, 1))[0]
            a, b = ends[:1].expand(steps, *ends.shape[1:]), ends[1:].expand(steps, *ends.shape[1:])
            shape = (steps,) + (1,) * (ends.dim() - 1)
            for kind, z in (("linear", a + (b - a) * t.view(shape)), ("spherical", slerp(a, b, t))):
                rows.append(objective.sample(z).float().cpu())
                labels.append(f"{family}\n{kind}")
    s.say("Left to right: from one latent to another. DCGAN latents are prior draws; VAE and RealNVP "
          "latents encode two held-out images (the VAE's posterior mean, the flow's exact inverse).\n")
    s.figure(show_rows(rows, labels, "Latent interpolation"), "interpolation.png",
             "Linear and spherical interpolation per family")
    s.results = {family: {"run": run} for family, run in runs.items()}


def latent_sweep(s: Study, values=torch.linspace(-3, 3, 9)):
    specs = [("dcgan-z10", "DCGAN, 10-d latent", "dcgan", ["--latent-dim", "10", *s.epochs(3, 10)]),
             ("beta-vae-z10", "beta-VAE (beta 4), 10-d", "beta-vae", ["--latent-dim", "10", "--beta", "4", *s.epochs()]),
             ("beta-vae-z32", "beta-VAE (beta 4), 32-d", "beta-vae", ["--latent-dim", "32", "--beta", "4", *s.epochs()])]
    s.results = {}
    s.say("Each row sweeps one latent dimension from -3 to 3 with the others fixed at a prior draw.\n")
    for name, title, model, options in specs:
        objective = s.load(s.train(name, model, *options)).objective
        base = objective.noise(1, torch.Generator().manual_seed(2)).to(s.device)
        rows = []
        for d in range(base.shape[1]):
            z = base.repeat(len(values), 1)
            z[:, d] = values.to(s.device)
            rows.append(objective.sample(z).float().cpu())
        # How much each dimension changes the image: disentangled beta-VAEs leave many dimensions inert.
        effect = [float((r - r.mean(0)).abs().mean()) for r in rows]
        s.figure(show_rows(rows, [f"z{d}" for d in range(len(rows))], title), f"sweep-{name}.png", title)
        active = sum(e > 0.01 for e in effect)
        s.results[name] = {"latent_dim": len(rows), "mean_abs_change_per_dim": effect, "active_dims": active}
        s.say(f"- {title}: {active} of {len(rows)} dimensions change the image by more than 1% on average\n")


# name in results -> (model, run-name suffix, options). The WGAN-GP authors' toy script uses a penalty
# weight of 0.1 ("smaller lambda seems to help for toy tasks"); the paper's 10 is kept for comparison.
MODE_COLLAPSE_MODELS = {"dcgan": ("dcgan", "", []),
                        "wgan-gp": ("wgan-gp", "-gp0.1", ["--gp-weight", "0.1"]),
                        "wgan-gp-lambda10": ("wgan-gp", "", ["--gp-weight", "10"])}


def mode_collapse(s: Study, stages=4):
    # The same number of generator updates for all: WGAN-GP steps its generator every 5th critic step.
    generator_steps = 100 if s.quick else 8000
    stages = 2 if s.quick else stages
    s.results = {}
    plt = pyplot()
    for toy in ("ring8", "grid25"):
        fig, axes = plt.subplots(len(MODE_COLLAPSE_MODELS), stages, figsize=(3 * stages, 3 * len(MODE_COLLAPSE_MODELS)),
                                 squeeze=False)
        for i, (key, (model, suffix, options)) in enumerate(MODE_COLLAPSE_MODELS.items()):
            history, run = [], f"{model}-{toy}{suffix}"
            total = generator_steps * (5 if model == "wgan-gp" else 1)
            stage_steps = [total * k // stages for k in range(1, stages + 1)]
            snapshots = s.train_stages(run, model, stage_steps, "--data", toy, "--latent-dim", "2", *options)
            for k, (steps, snapshot) in enumerate(snapshots):
                loaded = s.load(os.path.join(s.runs, run), snapshot)
                points, data = loaded.sample(2500, seed=3).cpu(), loaded.data()
                score = metrics.mode_coverage(points, toy)
                history.append(dict(score, step=steps))
                ax = axes[i, k]
                ax.scatter(*data.heldout[:2500].T, s=1, alpha=0.3, label="real")
                ax.scatter(*points.T, s=1, alpha=0.5, label="generated")
                ax.set_title(f"{key}, step {steps}: {score['modes_covered']}/{score['modes']} modes", fontsize=9)
                ax.set_aspect("equal")
            s.results.setdefault(toy, {})[key] = dict(history[-1], history=history, options=options)
        s.figure(fig, f"mode-collapse-{toy}.png", f"{toy}: real (blue) vs generated (orange) over training")
    s.results.update({m: {k: s.results["ring8"][m][k] for k in ("modes_covered", "high_quality")}
                      for m in ("dcgan", "wgan-gp")})
    s.say(f"All get {generator_steps} generator updates (WGAN-GP: 5 critic steps each), batch 64, 2-d latent. "
          "`wgan-gp` uses the penalty weight 0.1 of the WGAN-GP authors' toy script, `wgan-gp-lambda10` the "
          "paper's 10. A sample is high quality within 3 standard deviations of a mode's center; a mode is "
          "covered when at least 1% of 2,500 samples are high-quality samples of it.\n")
    s.say("| mixture | model | modes covered | high quality |\n| --- | --- | --- | --- |")
    for toy in ("ring8", "grid25"):
        for m, r in s.results[toy].items():
            s.say(f"| {toy} | {m} | {r['modes_covered']} / {r['modes']} | {r['high_quality']:.3f} |")
    s.say()


def label_smoothing(s: Study):
    runs = {"without": s.dcgan(),
            "with": s.train("dcgan-smoothing", "dcgan", "--label-smoothing", *s.epochs())}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    rows = []
    s.results = {}
    wanted = ["classifier_fid"] + (["inception_fid"] if s.inception_weights else [])
    for label, run in runs.items():
        loaded = s.load(run)
        scores = evaluate_run(loaded, metrics=wanted, fid_samples=1000, inception_weights=s.inception_weights)
        accuracy, compared = scores["classifier_accuracy"], scores["fid_samples"]
        s.results["images_compared"] = {"heldout": compared, "generated": compared}
        train_log, _ = curves(run)
        for ax, key in zip(axes, ("discriminator_loss", "generator_loss")):
            ax.plot([r["step"] for r in train_log if key in r], [r[key] for r in train_log if key in r],
                    label=f"{label} smoothing")
            ax.set_title(key)
            ax.set_xlabel("step")
        rows.append(loaded.sample(16).cpu())
        s.results[label] = {k: scores[k] for k in wanted}
        s.results[label]["run"] = run
    s.results["classifier_accuracy"] = accuracy
    for ax in axes:
        ax.legend()
    s.figure(fig, "label-smoothing-losses.png", "DCGAN losses with and without one-sided label smoothing")
    s.figure(show_rows(rows, list(runs), "DCGAN samples"), "label-smoothing-samples.png",
             "Samples without (top) and with (bottom) label smoothing")
    s.say(f"Classifier FID: Frechet distance between {compared} held-out and {compared} generated images in the "
          f"128 features of a small CNN trained on the same data set (held-out accuracy {accuracy:.3f}). It is "
          f"not the Inception FID and compares only runs scored by the same classifier. Lower is better.\n")
    s.say(f"- without smoothing: {s.results['without']['classifier_fid']:.3f}")
    s.say(f"- with smoothing (real labels in [0.7, 0.9]): {s.results['with']['classifier_fid']:.3f}\n")
    if s.inception_weights:
        s.say(f"Inception FID: without {s.results['without']['inception_fid']:.3f}, "
              f"with {s.results['with']['inception_fid']:.3f}\n")


def beta_sweep(s: Study):
    runs = {1: s.vae(),
            10: s.train("beta-vae-beta10", "beta-vae", "--beta", "10", *s.epochs()),
            100: s.train("beta-vae-beta100", "beta-vae", "--beta", "100", *s.epochs())}
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    recon_rows, sample_rows, labels = [], [], []
    s.results = {}
    for beta, run in runs.items():
        loaded = s.load(run)
        model, x = loaded.model, to_float(loaded.data().heldout[:8]).to(s.device)
        scores = evaluate_run(loaded, metrics=["elbo", "nll"], samples=50 if s.quick else 200)
        train_log, held = curves(run)
        for ax, key in zip(axes, ("loss", "recon", "kl")):
            ax.plot([r["step"] for r in train_log], [r[key] for r in train_log], label=f"beta {beta}")
            ax.set_title(key)
            ax.set_xlabel("step")
        with torch.no_grad():
            recon_rows.append(torch.cat([x.cpu(), torch.sigmoid(model(x)[0]).float().cpu()]))
        sample_rows.append(loaded.sample(16).cpu())
        labels.append(f"beta {beta}")
        s.results[str(beta)] = {"heldout_elbo": scores["elbo"], "heldout_nll_importance_sampled": scores["nll"],
                                "run": run}
    for ax in axes:
        ax.legend()
        ax.set_yscale("log")
    s.figure(fig, "beta-sweep-losses.png", "Training loss, reconstruction (BCE) and KL per beta")
    s.figure(show_rows(recon_rows, labels, "held-out images (left 8) and reconstructions (right 8)"),
             "beta-sweep-reconstructions.png", "Reconstructions per beta")
    s.figure(show_rows(sample_rows, labels, "samples"), "beta-sweep-samples.png", "Samples per beta")
    s.say("| beta | held-out ELBO (nats) | importance-sampled NLL (nats) |\n| --- | --- | --- |")
    for beta, r in s.results.items():
        s.say(f"| {beta} | {r['heldout_elbo']:.2f} | {r['heldout_nll_importance_sampled']:.2f} |")
    s.say(f"\nBoth on the {scores['images']} held-out images (`python -m genperf.evaluate`): the ELBO at beta = 1 "
          f"whatever the training beta, and the NLL, each from {scores['posterior_samples']} posterior draws "
          f"(the NLL by importance sampling, a tighter bound).\n")


def flow_stability(s: Study):
    every = 10 if s.quick else 50
    run = s.train("realnvp-stability", "realnvp", *s.realnvp(), *s.epochs(3, 12), "--eval-every", str(every))
    train_log, held = curves(run)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r["step"] for r in train_log], [r["bits_per_dim"] for r in train_log], label="train")
    ax.plot([r["step"] for r in held], [r["bits_per_dim"] for r in held], "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.legend()
    s.figure(fig, "flow-stability.png", f"RealNVP bits/dim, held-out every {every} steps")
    bpd = evaluate_run(s.load(run), metrics=["bits_per_dim"], samples=1)["bits_per_dim"]
    values = [r["bits_per_dim"] for r in held]
    jumps = [b - a for a, b in zip(values, values[1:])]
    s.results = {"heldout_bits_per_dim": bpd, "heldout_curve": [(r["step"], r["bits_per_dim"]) for r in held],
                 "largest_heldout_rise": max(jumps, default=0.0), "run": run}
    rise = s.results["largest_heldout_rise"]
    s.say(f"Final held-out bits/dim: {bpd:.3f}. " + (f"Largest rise of the held-out curve between two evaluations: "
          f"{rise:.3f} bits/dim." if rise > 0 else "The held-out curve never rose between two evaluations.") + "\n")


RUNNERS = {"evolution": evolution, "interpolation": interpolation, "latent-sweep": latent_sweep,
           "mode-collapse": mode_collapse, "label-smoothing": label_smoothing, "beta-sweep": beta_sweep,
           "flow-stability": flow_stability}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m genperf.study", description=__doc__.split("\n")[0])
    p.add_argument("experiment", choices=list(RUNNERS))
    p.add_argument("--out", required=True, help="report folder: report.md, figures, results.json")
    p.add_argument("--quick", action="store_true", help="a small CPU-sized version on the bundled digits data")
    p.add_argument("--runs", help="folder of the training runs, shared between experiments (default OUT/runs)")
    p.add_argument("--data", default="mnist", help="image data of the full versions (default mnist)")
    p.add_argument("--data-root", default="data", help="where --data lives (e.g. ../shared/data/mnist)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inception-weights", help="local FID Inception weights file; adds the standard FID "
                                               "(needs torchmetrics[image]) to label-smoothing")
    args = p.parse_args(argv)
    study = Study(args)
    t0 = time.perf_counter()
    try:
        RUNNERS[args.experiment](study)
    except GenperfError as e:
        print(f"genperf.study: error: {e}", file=sys.stderr, flush=True)
        return 2
    study.write(args.experiment, time.perf_counter() - t0)
    print(f"genperf.study: {args.experiment} done in {time.perf_counter() - t0:.0f} s; report {args.out}/report.md",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
