"""python -m genperf.study EXPERIMENT|all --out DIR [--seeds N] [--quick]: the study's experiments, reproduced.

Each experiment trains what it needs with genperf.train, once per seed (or reuses the run directories
under --runs, default DIR/runs, so experiments that share models train them once), then writes
DIR/report.md, its figures (PNG) and DIR/results.json: every number as the mean and standard deviation
over the seeds with each seed's value, and a verdict on each claim of the source study it tests. `all`
runs every experiment into DIR/NAME and writes a summary DIR/report.md. --quick is a smoke test on the
bundled `digits` data for tests and CI; the full versions train on MNIST (--data-root).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import torch

import genperf
from genperf import checkpoint, metrics, train
from genperf.errors import GenperfError
from genperf.evaluate import evaluate_run
from genperf.runlog import atomic_write_text, pyplot, read_metrics
from genperf.sample import slerp

# Training budgets in epochs: quick on the 8x8 digits (24 steps an epoch), full on MNIST (141). A quick budget is
# the least at which the model shows what its experiments look at: a DCGAN's classifier FID on digits is 478
# after 3 epochs (noise), 82 after 10 and 33 after 30; RealNVP at the width below rose by 0.24 held-out bits/dim
# once within 12 epochs, a narrower one (8 channels, 1 block) never in 20.
QUICK_EPOCHS, FULL_EPOCHS = 30, 20
STUDY_OPTIONS = "study-options.json"  # in each run folder: the genperf.train options the study trained it with
COLLAPSED_KL = 0.1  # nats: a VAE whose held-out KL is below this encodes nothing

# Quick VAEs see the digits upsampled to MNIST's 28x28 for 20 epochs: over 8x8 pixels the binary cross-entropy
# rewards a latent so little that beta 4 and above collapse to the mean digit, and in 3 epochs even beta 1 did
# (KL 0.5 nats); at 28x28 beta 1 / 10 / 100 reach KL 14 / 1.9 / 0 nats.
QUICK_VAE = ["--image-size", "28", "--epochs", "20"]
REALNVP = ["--mid-channels", "16", "--num-blocks", "2", "--amp", "--epochs", "12"]  # 0.32M parameters: CPU-sized


class Study:
    def __init__(self, args, experiment, out=None):
        self.experiment, self.quick, self.out = experiment, args.quick, out or args.out
        self.runs = args.runs or os.path.join(args.out, "runs")
        self.data = ["--data", "digits"] if args.quick else ["--data", args.data, "--data-root", args.data_root]
        self.device, self.seeds = args.device, args.seeds or default_seeds(experiment, args.quick)
        self.inception_weights = args.inception_weights
        self.lines, self.results = [], {}
        self.headlines, self.claims = [], []  # rows of the summary table, verdicts on the source study's claims
        os.makedirs(self.out, exist_ok=True)

    # ---- training and loading ----
    def _options(self, model, options, seed):
        """What makes a run the one asked for: model, data, options and seed (not its length, which stages grow)."""
        return [model, *(self.data if "--data" not in options else []), *options, "--seed", str(seed)]

    @staticmethod
    def _check_reuse(out, wanted):
        """A run folder that an earlier study trained with other options (a quick run, an older budget) is not the
        run asked for: refuse it rather than report it."""
        path = os.path.join(out, STUDY_OPTIONS)
        if os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
            if before != wanted:
                raise GenperfError(f"{out} was trained with `{' '.join(before)}`, not the `{' '.join(wanted)}` asked "
                                   "for now; give the study another --runs folder or move that run away")

    def _train(self, name, model, options, seed, steps=None):
        """python -m genperf.train MODEL --seed SEED into RUNS/name, resuming what is there."""
        out, wanted = os.path.join(self.runs, name), self._options(model, options, seed)
        argv = [*wanted, "--out", out, "--device", self.device, *(["--steps", str(steps)] if steps else []),
                *(["--log-every", "5"] if "--log-every" not in options else [])]
        if checkpoint.find(out):
            argv.append("--resume")  # an interrupted study picks up where it stopped
        print(f"genperf.study: training {name}: python -m genperf.train {' '.join(argv)}", flush=True)
        if train.main(argv) != 0:
            raise GenperfError(f"training {name} failed (see above)")
        atomic_write_text(json.dumps(wanted), os.path.join(out, STUDY_OPTIONS))
        return out

    @staticmethod
    def run_name(name, seed):
        """Seed 0 keeps the plain name, so runs trained before --seeds existed are reused."""
        return name if seed == 0 else f"{name}-seed{seed}"

    def train(self, name, model, *options, seed=0):
        """The run directory RUNS/name[-seedN], trained unless it already finished (summary.json present)."""
        name = self.run_name(name, seed)
        out = os.path.join(self.runs, name)
        self._check_reuse(out, self._options(model, options, seed))  # finished, or interrupted and resumed below
        if os.path.exists(os.path.join(out, "summary.json")):
            return out
        return self._train(name, model, options, seed)

    def train_stages(self, name, model, stages, *options, seed=0):
        """Trains RUNS/name[-seedN] to each step count of `stages` in turn (through --resume, which
        continues bit-exactly) and keeps a copy of the checkpoint of each, beside it in the run folder:
        [(steps, checkpoint path)]."""
        name = self.run_name(name, seed)
        out, snapshots = os.path.join(self.runs, name), []
        self._check_reuse(out, self._options(model, options, seed))
        for steps in stages:
            snapshot = os.path.join(out, f"checkpoint-step{steps:06d}.pt")
            if not os.path.exists(snapshot):
                self._train(name, model, options, seed, steps=steps)
                shutil.copyfile(os.path.join(out, checkpoint.CHECKPOINT), snapshot)
            snapshots.append((steps, snapshot))
        return snapshots

    # The runs several experiments share, spelled once so that a reused run is the one asked for.
    def dcgan(self, seed):
        return self.train("dcgan", "dcgan", *self.epochs(), seed=seed)

    def vae(self, seed):
        return self.train("vae-beta1", "vae", "--beta", "1", *self.vae_budget(), seed=seed)

    def flow(self, seed):
        """RealNVP with held-out bits/dim every few steps (evolution shows its samples, flow-stability its curve)."""
        every = "10" if self.quick else "50"
        return self.train("realnvp", "realnvp", *REALNVP, "--eval-every", every, seed=seed)

    def family_runs(self, seed):
        """A DCGAN, a VAE and a RealNVP."""
        return {"DCGAN": self.dcgan(seed), "VAE": self.vae(seed), "RealNVP": self.flow(seed)}

    def epochs(self, quick=QUICK_EPOCHS, full=FULL_EPOCHS):
        return ["--epochs", str(quick if self.quick else full)]

    def vae_budget(self):
        return QUICK_VAE if self.quick else self.epochs()

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

    def headline(self, what, entry, key, digits=2):
        """A row of the summary table: `what`, and entry[key] as mean +- std over the seeds."""
        self.headlines.append((self.experiment, what, pm(entry, key, digits), len(entry["per_seed"])))

    def claim(self, text, verdict, evidence):
        self.claims.append({"experiment": self.experiment, "claim": text, "verdict": verdict, "evidence": evidence})
        self.say(f"**Claim: {text}** Verdict: **{verdict}** ({evidence}).\n")

    def write(self, seconds):
        self.seconds = seconds
        self.results.update(wall_time_s=seconds, seeds=self.seeds, claims=self.claims)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)
        seeds = ",".join(map(str, self.seeds))
        head = [f"# {self.experiment}{' (quick)' if self.quick else ''}", ""]
        if self.quick:
            head += [QUICK_WARNING, ""]
        head += [f"`python -m genperf.study {self.experiment} --out {self.out} --seeds {seeds}"
                 f"{' --quick' if self.quick else ''}`: {seconds:.0f} s on {self.device}, seeds {seeds}; runs in "
                 f"`{self.runs}`; numbers in `results.json`. A value shown as m +- s is the mean over the seeds and "
                 f"their sample standard deviation.", ""]
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write("\n".join(head + self.lines) + "\n")


QUICK_WARNING = ("**Quick budgets are smoke tests**: minutes of CPU on the 8x8 `digits` (VAEs on them upsampled to 28x28) "
                 "and 300-600 generator updates on ring8; they show that every experiment runs end to end, not what the full budgets find.")


# ---- aggregation over seeds ----

def mean_std(values):
    """Mean and sample standard deviation (n - 1); the deviation is None for a single value."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def spread(per_seed):
    """{seed: {metric: value}} -> {metric: mean, metric_std: std, ..., "per_seed": {seed: {metric: value}}}."""
    keys = next(iter(per_seed.values())).keys()
    out = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([values[key] for values in per_seed.values()])
    out["per_seed"] = {str(seed): dict(values) for seed, values in per_seed.items()}
    return out


def pm(entry, key, digits=2):
    std = entry[f"{key}_std"]
    return f"{entry[key]:.{digits}f}" + (f" +- {std:.{digits}f}" if std is not None else " (one seed)")


def values_of(entry, key):
    return [values[key] for values in entry["per_seed"].values()]


REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this budget"


def verdict(higher, lower, smallest):
    """The claim "higher exceeds lower by at least `smallest`" (lists of per-seed values, or a fixed number
    as `lower`), judged from the difference of means d and its standard error se (Welch): reproduced when
    d - 2 se >= smallest (the interval clears the smallest effect that counts), not reproduced when
    d + 2 se < smallest (the data rule such an effect out, or show the opposite), inconclusive when the
    interval straddles it. Returns (verdict, text)."""
    samples = [higher] if isinstance(lower, (int, float)) else [higher, lower]
    if any(len(v) < 2 for v in samples):
        return INCONCLUSIVE, "one seed: no spread to judge a difference by"
    stats = [mean_std(v) for v in samples]
    d = stats[0][0] - (stats[1][0] if len(stats) > 1 else lower)
    se = math.sqrt(sum(std ** 2 / len(v) for (_, std), v in zip(stats, samples)))
    text = f"difference {d:+.3g} +- {2 * se:.2g} (2 standard errors, {len(higher)} seeds)"
    if d + 2 * se < smallest:
        return NOT_REPRODUCED, text + f"; an effect of {smallest:.3g} or more is ruled out"
    if d - 2 * se >= smallest:
        return REPRODUCED, text
    return INCONCLUSIVE, text + f"; it may or may not reach {smallest:.3g}"


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

def epochs_shown(run):
    """The first, middle and last epoch of a run."""
    last = int(json.load(open(os.path.join(run, "summary.json")))["epochs"])
    return sorted({1, max(1, last // 2), last})


def evolution(s: Study):
    runs = {seed: s.family_runs(seed) for seed in s.seeds}
    shown = runs[s.seeds[0]]
    plt = pyplot()
    picks = {family: epochs_shown(run) for family, run in shown.items()}
    columns = max(map(len, picks.values()))
    fig, axes = plt.subplots(len(shown), columns, figsize=(3 * columns, 3 * len(shown)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()  # a run of fewer epochs leaves its row's last cells empty
    for i, (family, run) in enumerate(shown.items()):
        for j, epoch in enumerate(picks[family]):
            axes[i, j].set_axis_on()
            axes[i, j].imshow(plt.imread(os.path.join(run, "samples", f"epoch_{epoch:03d}.png")), cmap="gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[i, j].set_title(f"{family}, epoch {epoch}", fontsize=9)
    s.say(f"Samples from the same fixed latents at the first, middle and last epoch, one family per row (seed "
          f"{s.seeds[0]}).\n")
    s.figure(fig, "evolution.png", "Samples over training (rows: DCGAN, VAE, RealNVP)")
    s.results = {}
    for family in shown:
        held = {seed: json.load(open(os.path.join(runs[seed][family], "summary.json")))["heldout"] for seed in s.seeds}
        entry = spread(held) if held[s.seeds[0]] else {"per_seed": {str(seed): {} for seed in s.seeds}}
        s.results[family] = dict(entry, run=shown[family], epochs_shown=picks[family])
    s.headline("VAE held-out ELBO (nats)", s.results["VAE"], "elbo")
    s.headline("RealNVP held-out bits/dim", s.results["RealNVP"], "bits_per_dim", 3)
    s.say(f"- VAE held-out ELBO: {pm(s.results['VAE'], 'elbo')} nats; RealNVP held-out bits/dim: "
          f"{pm(s.results['RealNVP'], 'bits_per_dim', 3)}; DCGAN: no likelihood (see label-smoothing for its FID).\n")


def interpolation(s: Study, steps=9):
    seed = s.seeds[0]
    runs = s.family_runs(seed)
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
    s.say(f"Left to right: from one latent to another (the runs of seed {seed}). DCGAN latents are prior draws; VAE "
          "and RealNVP latents encode two held-out images (the VAE's posterior mean, the flow's exact inverse).\n")
    s.figure(show_rows(rows, labels, "Latent interpolation"), "interpolation.png",
             "Linear and spherical interpolation per family")
    s.results = {family: {"run": run} for family, run in runs.items()}


def latent_sweep(s: Study, values=torch.linspace(-3, 3, 9)):
    specs = [("dcgan-z10", "DCGAN, 10-d latent", "dcgan", ["--latent-dim", "10", *s.epochs(full=10)]),
             ("beta-vae-z10", "beta-VAE (beta 4), 10-d", "beta-vae", ["--latent-dim", "10", "--beta", "4", *s.vae_budget()]),
             ("beta-vae-z32", "beta-VAE (beta 4), 32-d", "beta-vae", ["--latent-dim", "32", "--beta", "4", *s.vae_budget()])]
    s.results = {}
    s.say(f"Each row sweeps one latent dimension from -3 to 3 with the others fixed at a prior draw (figures: seed "
          f"{s.seeds[0]}). A dimension is active when it changes the image by more than 1% on average.\n")
    for name, title, model, options in specs:
        active, shown = {}, None
        for seed in s.seeds:
            objective = s.load(s.train(name, model, *options, seed=seed)).objective
            base = objective.noise(1, torch.Generator().manual_seed(2)).to(s.device)
            rows = []
            for d in range(base.shape[1]):
                z = base.repeat(len(values), 1)
                z[:, d] = values.to(s.device)
                rows.append(objective.sample(z).float().cpu())
            # How much each dimension changes the image: disentangled beta-VAEs leave many dimensions inert.
            effect = [float((r - r.mean(0)).abs().mean()) for r in rows]
            active[seed] = {"active_dims": sum(e > 0.01 for e in effect)}
            if shown is None:
                shown = effect
                s.figure(show_rows(rows, [f"z{d}" for d in range(len(rows))], title), f"sweep-{name}.png", title)
        s.results[name] = dict(spread(active), latent_dim=len(shown), mean_abs_change_per_dim=shown)
        s.headline(f"{title}: active latent dimensions of {len(shown)}", s.results[name], "active_dims", 1)
        s.say(f"- {title}: {pm(s.results[name], 'active_dims', 1)} of {len(shown)} dimensions active\n")
        if s.results[name]["active_dims"] == 0:
            s.say(f"  No dimension changes the image: {title} learned no use of its latent at this budget.\n")


# The published toy protocol (the WGAN-GP authors' gan_toy.py): MLPs of 3 ReLU layers of 512 units
# (genperf's MLPGenerator/MLPDiscriminator), 2-d noise, batch 256, 5 critic steps per generator step,
# each model's own optimizer (WGAN-GP: Adam 1e-4 (0.5, 0.9); WGAN: RMSprop 5e-5, clip 0.01; DCGAN: Adam
# 2e-4 (0.5, 0.999)) and the script's penalty weight 0.1 ("smaller lambda seems to help for toy tasks").
TOY_PROTOCOL = ["--latent-dim", "2", "--batch-size", "256", "--log-every", "100"]
MODE_COLLAPSE_MODELS = {"dcgan": [], "wgan-gp": ["--gp-weight", "0.1"], "wgan": ["--clip", "0.01"]}
# Generator updates per run (the script runs 100k; see README for the CPU budget behind the full one), scored
# every `every` updates. DCGAN's update costs a fifth of a WGAN's 5 critic steps, so it gets 3x the updates
# (still less CPU time): a collapse must outlast that, not just be slower learning.
MODE_COLLAPSE_BUDGET = {"quick": dict(every=300, updates={"dcgan": 300, "wgan-gp": 600, "wgan": 300}, toys=("ring8",)),
                        "full": dict(every=200, updates={"dcgan": 3000, "wgan-gp": 1000, "wgan": 1000},
                                     toys=("ring8", "grid25"))}
SCATTER_COLUMNS = 5  # scatter plots per model: at 1/5, 2/5, ... of its budget


def mode_collapse(s: Study):
    budget = MODE_COLLAPSE_BUDGET["quick" if s.quick else "full"]
    s.results = {}
    plt = pyplot()
    for toy in budget["toys"]:
        columns = min(SCATTER_COLUMNS, min(budget["updates"].values()) // budget["every"])
        fig, axes = plt.subplots(len(MODE_COLLAPSE_MODELS), columns,
                                 figsize=(2.6 * columns, 2.6 * len(MODE_COLLAPSE_MODELS)), squeeze=False)
        real = None  # the first seed's held-out points, drawn behind every panel
        for i, (model, options) in enumerate(MODE_COLLAPSE_MODELS.items()):
            critic_steps = 1 if model == "dcgan" else 5  # a WGAN step is a critic step
            updates = budget["updates"][model]
            stage_steps = [g * critic_steps for g in range(budget["every"], updates + 1, budget["every"])]
            shown = [updates * k // columns * critic_steps for k in range(1, columns + 1)]
            history, final = {}, {}
            for seed in s.seeds:
                snapshots = s.train_stages(f"{model}-{toy}", model, stage_steps, "--data", toy, *TOY_PROTOCOL,
                                           *options, seed=seed)
                for steps, snapshot in snapshots:
                    loaded = s.load(os.path.dirname(snapshot), snapshot)
                    points = loaded.sample(2500, seed=3).cpu()
                    score = metrics.mode_coverage(points, toy)
                    final[seed] = {"modes_covered": score["modes_covered"], "high_quality": score["high_quality"]}
                    history.setdefault(steps // critic_steps, {})[seed] = final[seed]
                    if seed == s.seeds[0] and steps in shown:
                        if real is None:  # makes the 500,000-point data set: once, not per panel
                            real = loaded.data().heldout[:2500]
                        ax, lim = axes[i, shown.index(steps)], 3 if toy == "ring8" else 5
                        ax.scatter(*points.T, s=1, alpha=0.3, color="tab:orange")
                        ax.scatter(*real.T, s=1, color="tab:blue")  # on top: the modes are tiny
                        ax.set_title(f"{model}, {steps // critic_steps} G steps: {score['modes_covered']}/"
                                     f"{score['modes']}", fontsize=8)
                        ax.set_xlim(-lim, lim)
                        ax.set_ylim(-lim, lim)
                        ax.set_aspect("equal")
                        ax.set_xticks([])
                        ax.set_yticks([])
            s.results.setdefault(toy, {})[model] = dict(
                spread(final), modes=score["modes"], options=options,
                history=[dict(spread(h), generator_steps=g) for g, h in sorted(history.items())])
        s.figure(fig, f"mode-collapse-{toy}.png", f"{toy}: real (blue) vs generated (orange) over training, seed "
                                                  f"{s.seeds[0]}")
    s.figure(coverage_curves(s.results), "mode-collapse-curves.png",
             "Modes covered and high-quality fraction against generator updates: mean over seeds, shaded +- 1 std")
    s.results.update({m: {k: v for k, v in s.results["ring8"][m].items() if k not in ("history", "options", "modes")}
                      for m in ("dcgan", "wgan-gp")})
    s.say("The WGAN-GP authors' toy protocol: generator and critic MLPs of 3 ReLU layers of 512 units, 2-d noise, "
          "batch 256, 5 critic steps per generator step for both WGANs, WGAN-GP penalty weight 0.1, each model's "
          "own optimizer; " + ", ".join(f"{n} generator updates for {m}" for m, n in budget["updates"].items())
          + f" (the protocol's 100,000 do not fit a CPU budget; DCGAN's update costs a fifth of a WGAN's), scored "
          f"every {budget['every']}. The metric of VEEGAN / PacGAN: of 2,500 samples, a sample is high "
          f"quality within 3 standard deviations of its nearest mode; a mode is covered when at least 1% of the "
          f"samples are high-quality samples of it. Seeds {', '.join(map(str, s.seeds))}.\n")
    s.say("| mixture | model | generator updates | modes covered | high quality | modes gained over the last third |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for toy in budget["toys"]:
        for m, r in s.results[toy].items():
            gain, band, rising = late_gain(r["history"], "modes_covered")
            r["late_modes_gained"], r["still_rising"] = gain, rising
            s.say(f"| {toy} | {m} | {budget['updates'][m]} | {pm(r, 'modes_covered', 1)} / {r['modes']} | "
                  f"{pm(r, 'high_quality', 3)} | {gain:+.1f} +- {band:.1f}{' (still rising)' if rising else ''} |")
            s.headline(f"{toy} {m}: modes covered of {r['modes']}", r, "modes_covered", 1)
            s.headline(f"{toy} {m}: high-quality fraction", r, "high_quality", 3)
    s.say()
    for toy in budget["toys"]:
        got = s.results[toy]
        outcome, text = verdict(values_of(got["wgan-gp"], "modes_covered"), values_of(got["dcgan"], "modes_covered"), 1)
        rising = [m for m in ("wgan-gp", "dcgan") if got[m]["still_rising"]]
        if rising:  # a claim about where training ends needs curves that have settled
            outcome, text = INCONCLUSIVE, text + f"; {' and '.join(rising)} still gain modes over the last third of " \
                                                 f"the budget"
        s.claim(f"WGAN-GP covers more modes of {toy} than DCGAN, which collapses (each at the end of its budget)",
                outcome, text)


def late_gain(history, key):
    """How much `key` grew over the last third of training: the mean of the per-seed changes from the stage
    at two thirds of the budget to the last, two standard errors of it, and whether it clearly still rises."""
    first, last = history[2 * len(history) // 3 - 1]["per_seed"], history[-1]["per_seed"]
    gain, std = mean_std([last[seed][key] - first[seed][key] for seed in last])
    band = 0.0 if std is None else 2 * std / math.sqrt(len(last))
    return gain, band, std is not None and gain - band > 0


def coverage_curves(results):
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for row, (toy, models) in zip(axes, results.items()):
        for ax, key in zip(row, ("modes_covered", "high_quality")):
            for model, r in models.items():
                x = [h["generator_steps"] for h in r["history"]]
                mean = [h[key] for h in r["history"]]
                std = [h[f"{key}_std"] or 0.0 for h in r["history"]]
                ax.plot(x, mean, "o-", ms=3, label=model)
                ax.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.2)
            ax.set_title(f"{toy}: {key.replace('_', ' ')}", fontsize=10)
            ax.set_xlabel("generator updates")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def seed_spread(entries, key, title, ylabel):
    """Each configuration's per-seed values (dots) and mean +- std (bar): {label: entry of spread()}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(entries) + 2, 3.2))
    for x, (label, entry) in enumerate(entries.items()):
        values = values_of(entry, key)
        ax.plot([x] * len(values), values, "o", color="0.5", ms=4)
        ax.errorbar([x + 0.15], [entry[key]], yerr=[entry[f"{key}_std"] or 0.0], fmt="s", color="tab:red", capsize=4)
    ax.set_xticks(range(len(entries)), list(entries))
    ax.set_xlim(-0.5, len(entries) - 0.5)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def label_smoothing(s: Study):
    variants = {"without": ("dcgan", []), "with": ("dcgan-smoothing", ["--label-smoothing"])}
    wanted = ["classifier_fid"] + (["inception_fid"] if s.inception_weights else [])
    scores, rows = {label: {} for label in variants}, []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for label, (name, options) in variants.items():
        for seed in s.seeds:
            run = s.train(name, "dcgan", *options, *s.epochs(), seed=seed)  # "without" is s.dcgan(seed)
            loaded = s.load(run)
            got = evaluate_run(loaded, metrics=wanted, fid_samples=1000, inception_weights=s.inception_weights)
            accuracy, compared = got["classifier_accuracy"], got["fid_samples"]
            scores[label][seed] = {k: got[k] for k in wanted}
            if seed == s.seeds[0]:
                train_log, _ = curves(run)
                for ax, key in zip(axes, ("discriminator_loss", "generator_loss")):
                    ax.plot([r["step"] for r in train_log if key in r], [r[key] for r in train_log if key in r],
                            label=f"{label} smoothing")
                    ax.set_title(key)
                    ax.set_xlabel("step")
                rows.append(loaded.sample(16).cpu())
    s.results = {label: spread(per_seed) for label, per_seed in scores.items()}
    s.results.update(classifier_accuracy=accuracy, images_compared={"heldout": compared, "generated": compared})
    for ax in axes:
        ax.legend()
    s.figure(fig, "label-smoothing-losses.png", f"DCGAN losses with and without one-sided label smoothing (seed "
                                                f"{s.seeds[0]})")
    s.figure(show_rows(rows, list(variants), "DCGAN samples"), "label-smoothing-samples.png",
             "Samples without (top) and with (bottom) label smoothing")
    s.say(f"Classifier FID: Frechet distance between {compared} held-out and {compared} generated images in the "
          f"128 features of a small CNN trained on the same data set (held-out accuracy {accuracy:.3f}). It is "
          f"not the Inception FID and compares only runs scored by the same classifier. Lower is better.\n")
    s.figure(seed_spread({f"{k} smoothing": s.results[k] for k in variants}, "classifier_fid",
                         "classifier FID per seed (grey) and mean +- std (red)", "classifier FID"),
             "label-smoothing-fid.png", "Classifier FID of every seed, with and without label smoothing")
    s.say(f"- without smoothing: {pm(s.results['without'], 'classifier_fid')}")
    s.say(f"- with smoothing (real labels in [0.7, 0.9]): {pm(s.results['with'], 'classifier_fid')}\n")
    for label in variants:
        s.headline(f"DCGAN classifier FID, {label} label smoothing", s.results[label], "classifier_fid")
    if s.inception_weights:
        s.say(f"Inception FID: without {pm(s.results['without'], 'inception_fid')}, "
              f"with {pm(s.results['with'], 'inception_fid')}\n")
    without = values_of(s.results["without"], "classifier_fid")
    smallest = 0.05 * mean_std(without)[0]
    s.claim("one-sided label smoothing improves (lowers) the DCGAN's FID; an effect under 5% of the FID without "
            "it does not count", *verdict(without, values_of(s.results["with"], "classifier_fid"), smallest))


def beta_sweep(s: Study):
    betas = (1, 10, 100)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    recon_rows, sample_rows, labels, scores = [], [], [], {}
    for beta in betas:
        for seed in s.seeds:
            run = s.vae(seed) if beta == 1 else s.train(f"beta-vae-beta{beta}", "beta-vae", "--beta", str(beta),
                                                        *s.vae_budget(), seed=seed)
            loaded = s.load(run)
            got = evaluate_run(loaded, metrics=["elbo", "nll"], samples=50 if s.quick else 200)
            scores.setdefault(beta, {})[seed] = {"heldout_elbo": got["elbo"], "heldout_nll_importance_sampled": got["nll"],
                                                 "recon": got["recon"], "kl": got["kl"]}
            if seed != s.seeds[0]:
                continue
            train_log, _ = curves(run)
            for ax, key in zip(axes, ("loss", "recon", "kl")):
                ax.plot([r["step"] for r in train_log], [r[key] for r in train_log], label=f"beta {beta}")
                ax.set_title(key)
                ax.set_xlabel("step")
            model, x = loaded.model, to_float(loaded.data().heldout[:8]).to(s.device)
            with torch.no_grad():
                recon_rows.append(torch.cat([x.cpu(), torch.sigmoid(model(x)[0]).float().cpu()]))
            sample_rows.append(loaded.sample(16).cpu())
            labels.append(f"beta {beta}")
    s.results = {str(beta): spread(per_seed) for beta, per_seed in scores.items()}
    for ax in axes:
        ax.legend()
        ax.set_yscale("log")
    s.figure(fig, "beta-sweep-losses.png", f"Training loss, reconstruction (BCE) and KL per beta (seed {s.seeds[0]})")
    s.figure(show_rows(recon_rows, labels, "held-out images (left 8) and reconstructions (right 8)"),
             "beta-sweep-reconstructions.png", "Reconstructions per beta")
    s.figure(show_rows(sample_rows, labels, "samples"), "beta-sweep-samples.png", "Samples per beta")
    s.figure(seed_spread({f"beta {b}": r for b, r in s.results.items()}, "heldout_elbo",
                         "held-out ELBO per seed (grey) and mean +- std (red)", "nats"),
             "beta-sweep-elbo.png", "Held-out ELBO of every seed per beta")
    s.say("| beta | held-out ELBO (nats) | importance-sampled NLL (nats) | reconstruction (BCE) | KL |\n"
          "| --- | --- | --- | --- | --- |")
    for beta, r in s.results.items():
        s.say(f"| {beta} | {pm(r, 'heldout_elbo')} | {pm(r, 'heldout_nll_importance_sampled')} | {pm(r, 'recon')} | "
              f"{pm(r, 'kl')} |")
        s.headline(f"beta {beta}: held-out ELBO (nats)", r, "heldout_elbo")
    for beta, r in s.results.items():
        if r["kl"] < COLLAPSED_KL:
            s.say(f"\nAt beta {beta} the posterior collapsed (KL {r['kl']:.3f} nats): the latent carries no information "
                  "and every sample is close to the mean image. That is the far end of the trade-off beta makes.")
    s.say(f"\nAll on the {got['images']} held-out images (`python -m genperf.evaluate`): the ELBO at beta = 1 "
          f"whatever the training beta, and the NLL, each from {got['posterior_samples']} posterior draws "
          f"(the NLL by importance sampling, a tighter bound).\n")
    judged = [verdict(values_of(s.results[str(a)], "heldout_elbo"), values_of(s.results[str(b)], "heldout_elbo"), 1.0)
              for a, b in zip(betas, betas[1:])]
    outcome = (NOT_REPRODUCED if any(v == NOT_REPRODUCED for v, _ in judged) else
               REPRODUCED if all(v == REPRODUCED for v, _ in judged) else INCONCLUSIVE)
    s.claim("a larger beta buys a more regular latent with worse reconstructions: the held-out ELBO falls from beta "
            "1 to 10 to 100 (by 1 nat or more at each step)", outcome,
            "; ".join(f"beta {a} vs {b}: {text}" for (a, b), (_, text) in zip(zip(betas, betas[1:]), judged)))


INSTABILITY = 0.05  # bits/dim: a rise of the held-out curve larger than this between two evaluations is a jump


def flow_stability(s: Study):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    found, held_curves = {}, {}
    for seed in s.seeds:
        run = s.flow(seed)
        train_log, held = curves(run)
        if seed == s.seeds[0]:
            shown = run
            ax.plot([r["step"] for r in train_log], [r["bits_per_dim"] for r in train_log], color="0.6",
                    label=f"train, seed {seed}")
            every = json.load(open(os.path.join(run, "config.json")))["eval_every"]
        ax.plot([r["step"] for r in held], [r["bits_per_dim"] for r in held], "o-", ms=2, label=f"held-out, seed {seed}")
        values = [r["bits_per_dim"] for r in held]
        found[seed] = {"heldout_bits_per_dim": values[-1],
                       "largest_heldout_rise": max([0.0] + [b - a for a, b in zip(values, values[1:])])}
        held_curves[str(seed)] = [(r["step"], r["bits_per_dim"]) for r in held]
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.set_ylim(top=min(ax.get_ylim()[1], 2 * max(v["heldout_bits_per_dim"] for v in found.values()) + 1))
    ax.legend(fontsize=8)
    s.figure(fig, "flow-stability.png", f"RealNVP bits/dim, held-out every {every} steps, one curve per seed")
    s.results = dict(spread(found), heldout_curves=held_curves, run=shown)
    s.headline("RealNVP final held-out bits/dim", s.results, "heldout_bits_per_dim", 3)
    s.headline("RealNVP largest rise of held-out bits/dim between evaluations", s.results, "largest_heldout_rise", 3)
    s.say(f"Final held-out bits/dim {pm(s.results, 'heldout_bits_per_dim', 3)}; the largest rise of the held-out "
          f"curve between two consecutive evaluations (every {every} steps and at each epoch's end): "
          f"{pm(s.results, 'largest_heldout_rise', 3)} bits/dim "
          f"(per seed: {', '.join('%.3f' % v['largest_heldout_rise'] for v in found.values())}).\n")
    s.claim(f"RealNVP training is unstable: its held-out bits/dim jumps up during training (by more than "
            f"{INSTABILITY} bits/dim between two evaluations)",
            *verdict(values_of(s.results, "largest_heldout_rise"), INSTABILITY, 0.0))


RUNNERS = {"evolution": evolution, "interpolation": interpolation, "latent-sweep": latent_sweep,
           "mode-collapse": mode_collapse, "label-smoothing": label_smoothing, "beta-sweep": beta_sweep,
           "flow-stability": flow_stability}


def parse_seeds(text):
    """--seeds: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of seeds, got {text!r}") from None
    if len(seeds) == 1:
        if seeds[0] < 1:
            raise argparse.ArgumentTypeError(f"the number of seeds must be >= 1, got {seeds[0]}")
        return list(range(seeds[0]))
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct and >= 0, got {text}")
    return seeds


# Seeds per experiment when --seeds is not given: five for the toys (cheap, and the noisiest metric), three
# for the image experiments; two for the --quick smoke tests.
DEFAULT_SEEDS = {"mode-collapse": 5}
FULL_SEEDS, QUICK_SEEDS = 3, 2


def default_seeds(name, quick):
    return list(range(QUICK_SEEDS if quick else DEFAULT_SEEDS.get(name, FULL_SEEDS)))


def run_experiment(args, name, out):
    study = Study(args, name, out)
    t0 = time.perf_counter()
    RUNNERS[name](study)
    study.write(time.perf_counter() - t0)
    print(f"genperf.study: {name} done in {time.perf_counter() - t0:.0f} s; report {out}/report.md", flush=True)
    return study


def write_summary(args, studies, seconds):
    """OUT/report.md of `study all`: every headline number with its spread, and the verdicts."""
    given = f" --seeds {','.join(map(str, args.seeds))}" if args.seeds else ""
    lines = [f"# The study{' (quick)' if args.quick else ''}", ""]
    if args.quick:
        lines += [QUICK_WARNING, ""]
    lines += [f"`python -m genperf.study all --out {args.out}{given}{' --quick' if args.quick else ''}`: "
              f"{seconds:.0f} s on {args.device} (" + ", ".join(f"{st.experiment} {st.seconds:.0f} s" for st in studies)
              + "). Each experiment's report, figures and numbers are in its own folder; m +- s is the mean over the "
              "seeds and their sample standard deviation.", "",
              "| experiment | quantity | mean +- std | seeds |", "| --- | --- | --- | --- |"]
    lines += [f"| [{exp}]({exp}/report.md) | {what} | {value} | {n} |" for st in studies for exp, what, value, n in
              st.headlines]
    lines += ["", "## The source study's claims", "",
              "Judged from the seeds' spread (`genperf.study.verdict`): with d the difference of the means and se its "
              "standard error, *reproduced* when d - 2 se reaches the smallest effect the claim counts, *not "
              "reproduced* when d + 2 se stays below it (ruled out, or the opposite), *inconclusive at this budget* "
              "when the interval straddles it.", "", "| claim | verdict | evidence |", "| --- | --- | --- |"]
    lines += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for st in studies for c in st.claims]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"wall_time_s": seconds, "experiments": {st.experiment: st.results for st in studies}}, f, indent=2)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m genperf.study", description=__doc__.split("\n")[0])
    p.add_argument("experiment", choices=["all", *RUNNERS], help="one experiment, or all of them (each into OUT/NAME)")
    p.add_argument("--out", required=True, help="report folder: report.md, figures, results.json")
    p.add_argument("--seeds", type=parse_seeds, metavar="N|S1,S2,...",
                   help="train every configuration with seeds 0..N-1 (or the seeds listed) and report mean +- std "
                        f"(default: {DEFAULT_SEEDS['mode-collapse']} for mode-collapse, {FULL_SEEDS} for the others, "
                        f"{QUICK_SEEDS} with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke-test budgets on the bundled digits data (minutes)")
    p.add_argument("--runs", help="folder of the training runs, shared between experiments (default OUT/runs)")
    p.add_argument("--data", default="mnist", help="image data of the full versions (default mnist)")
    p.add_argument("--data-root", default="data", help="where --data lives (default ./data, where MNIST is downloaded)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to train and evaluate (default: cuda when available)")
    p.add_argument("--inception-weights", help="local FID Inception weights file; adds the standard FID "
                                               "(needs torchmetrics[image]) to label-smoothing")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.experiment != "all":
            run_experiment(args, args.experiment, args.out)
            return 0
        args.runs = args.runs or os.path.join(args.out, "runs")
        studies = [run_experiment(args, name, os.path.join(args.out, name)) for name in RUNNERS]
    except GenperfError as e:
        print(f"genperf.study: error: {e}", file=sys.stderr, flush=True)
        return 2
    write_summary(args, studies, time.perf_counter() - t0)
    print(f"genperf.study: all done in {time.perf_counter() - t0:.0f} s; summary {args.out}/report.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
