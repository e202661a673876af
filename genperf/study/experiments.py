"""The seven experiments of the study, each a function of a Study (genperf.study.runner) that trains what it
needs, draws its figures, states its numbers with their spread over seeds, and judges the source study's claims."""

from __future__ import annotations

import json
import os

import torch

from genperf import metrics
from genperf.evaluate import evaluate_run
from genperf.families.flow import PUBLISHED_RECIPE, STUDY_BATCH_SIZE
from genperf.runlog import pyplot
from genperf.sample import slerp
from genperf.study.report import coverage_curves, curves, seed_spread, show_rows
from genperf.study.runner import Study
from genperf.study.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    late_gain,
    mean_std,
    pm,
    spread,
    values_of,
    verdict,
)

# Training budgets in epochs: quick on the 8x8 digits (24 steps an epoch), full on MNIST (141). A quick budget is
# the least at which the model shows what its experiments look at: a DCGAN's classifier FID on digits is 478
# after 3 epochs (noise), 82 after 10 and 33 after 30; RealNVP at the width below rose by 0.24 held-out bits/dim
# once within 12 epochs, a narrower one (8 channels, 1 block) never in 20.
QUICK_EPOCHS, FULL_EPOCHS = 30, 20
COLLAPSED_KL = 0.1  # nats: a VAE whose held-out KL is below this encodes nothing

# Quick VAEs see the digits upsampled to MNIST's 28x28 for 20 epochs: over 8x8 pixels the binary cross-entropy
# rewards a latent so little that beta 4 and above collapse to the mean digit, and in 3 epochs even beta 1 did
# (KL 0.5 nats); at 28x28 beta 1 / 10 / 100 reach KL 14 / 1.9 / 0 nats.
QUICK_VAE = {"image_size": 28, "epochs": 20}
# 0.32M parameters: CPU-sized; trained with the source study's recipe (Adam at 1e-3, constant) and batch, not genperf's
# defaults, whose decay would hide the volatility flow-stability looks for.
REALNVP = {
    "mid_channels": 16,
    "num_blocks": 2,
    "amp": True,
    "epochs": 12,
    "batch_size": STUDY_BATCH_SIZE,
    **PUBLISHED_RECIPE,
}


def epochs(s: Study, quick=QUICK_EPOCHS, full=FULL_EPOCHS):
    return {"epochs": quick if s.quick else full}


def vae_budget(s: Study):
    return QUICK_VAE if s.quick else epochs(s)


# The runs several experiments share, spelled once so that a reused run is the one asked for.
def dcgan(s: Study, seed):
    return s.train("dcgan", "dcgan", epochs(s), seed=seed)


def vae(s: Study, seed):
    return s.train("vae-beta1", "vae", {"beta": 1, **vae_budget(s)}, seed=seed)


def flow(s: Study, seed):
    """RealNVP with held-out bits/dim every few steps (evolution shows its samples, flow-stability its curve)."""
    return s.train("realnvp", "realnvp", {**REALNVP, "eval_every": 10 if s.quick else 50}, seed=seed)


def family_runs(s: Study, seed):
    """A DCGAN, a VAE and a RealNVP."""
    return {"DCGAN": dcgan(s, seed), "VAE": vae(s, seed), "RealNVP": flow(s, seed)}


def to_float(images):
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def epochs_shown(run):
    """The first, middle and last epoch of a run."""
    last = int(json.load(open(os.path.join(run, "summary.json")))["epochs"])
    return sorted({1, max(1, last // 2), last})


def evolution(s: Study):
    runs = {seed: family_runs(s, seed) for seed in s.seeds}
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
            axes[i, j].imshow(
                plt.imread(os.path.join(run, "samples", f"epoch_{epoch:03d}.png")), cmap="gray", interpolation="nearest"
            )
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[i, j].set_title(f"{family}, epoch {epoch}", fontsize=9)
    s.say(
        f"Samples from the same fixed latents at the first, middle and last epoch, one family per row (seed "
        f"{s.seeds[0]}).\n"
    )
    s.figure(fig, "evolution.png", "Samples over training (rows: DCGAN, VAE, RealNVP)")
    s.results = {}
    for family in shown:
        held = {seed: json.load(open(os.path.join(runs[seed][family], "summary.json")))["heldout"] for seed in s.seeds}
        entry = spread(held) if held[s.seeds[0]] else {"per_seed": {str(seed): {} for seed in s.seeds}}
        s.results[family] = dict(entry, run=shown[family], epochs_shown=picks[family])
    s.headline("VAE held-out ELBO (nats)", s.results["VAE"], "elbo")
    s.headline("RealNVP held-out bits/dim", s.results["RealNVP"], "bits_per_dim", 3)
    s.say(
        f"- VAE held-out ELBO: {pm(s.results['VAE'], 'elbo')} nats; RealNVP held-out bits/dim: "
        f"{pm(s.results['RealNVP'], 'bits_per_dim', 3)}; DCGAN: no likelihood (see label-smoothing for its FID).\n"
    )


def interpolation(s: Study, steps=9):
    seed = s.seeds[0]
    runs = family_runs(s, seed)
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
    s.say(
        f"Left to right: from one latent to another (the runs of seed {seed}). DCGAN latents are prior draws; VAE "
        "and RealNVP latents encode two held-out images (the VAE's posterior mean, the flow's exact inverse).\n"
    )
    s.figure(
        show_rows(rows, labels, "Latent interpolation"),
        "interpolation.png",
        "Linear and spherical interpolation per family",
    )
    s.results = {family: {"run": run} for family, run in runs.items()}


def latent_sweep(s: Study, values=(-3, 3, 9)):
    values = torch.linspace(*values)  # (from, to, steps) of the swept dimension
    specs = [
        ("dcgan-z10", "DCGAN, 10-d latent", "dcgan", {"latent_dim": 10, **epochs(s, full=10)}),
        ("beta-vae-z10", "beta-VAE (beta 4), 10-d", "beta-vae", {"latent_dim": 10, "beta": 4, **vae_budget(s)}),
        ("beta-vae-z32", "beta-VAE (beta 4), 32-d", "beta-vae", {"latent_dim": 32, "beta": 4, **vae_budget(s)}),
    ]
    s.results = {}
    s.say(
        f"Each row sweeps one latent dimension from -3 to 3 with the others fixed at a prior draw (figures: seed "
        f"{s.seeds[0]}). A dimension is active when it changes the image by more than 1% on average.\n"
    )
    for name, title, model, options in specs:
        active, shown = {}, None
        for seed in s.seeds:
            objective = s.load(s.train(name, model, options, seed=seed)).objective
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
TOY_PROTOCOL = {"latent_dim": 2, "batch_size": 256, "log_every": 100}
MODE_COLLAPSE_MODELS = {"dcgan": {}, "wgan-gp": {"gp_weight": 0.1}, "wgan": {"clip": 0.01}}
# Generator updates per run (the script runs 100k; see docs/study.md for the CPU budget behind the full one), scored
# every `every` updates. DCGAN's update costs a fifth of a WGAN's 5 critic steps, so it gets 3x the updates
# (still less CPU time): a collapse must outlast that, not just be slower learning.
MODE_COLLAPSE_BUDGET = {
    "quick": dict(every=300, updates={"dcgan": 300, "wgan-gp": 600, "wgan": 300}, toys=("ring8",)),
    "full": dict(every=200, updates={"dcgan": 3000, "wgan-gp": 1000, "wgan": 1000}, toys=("ring8", "grid25")),
}
SCATTER_COLUMNS = 5  # scatter plots per model: at 1/5, 2/5, ... of its budget


def mode_collapse(s: Study):
    """Each GAN of the toy protocol trained in stages on each 2-D mixture, scored at every stage: scatter plots,
    coverage curves, a table, and the verdict on DCGAN's collapse."""
    budget = MODE_COLLAPSE_BUDGET["quick" if s.quick else "full"]
    s.results = {}
    for toy in budget["toys"]:
        _mode_collapse_toy(s, toy, budget)
    s.figure(
        coverage_curves(s.results),
        "mode-collapse-curves.png",
        "Modes covered and high-quality fraction against generator updates: mean over seeds, shaded +- 1 std",
    )
    s.results.update(
        {
            m: {k: v for k, v in s.results["ring8"][m].items() if k not in ("history", "options", "modes")}
            for m in ("dcgan", "wgan-gp")
        }
    )
    s.say(
        "The WGAN-GP authors' toy protocol: generator and critic MLPs of 3 ReLU layers of 512 units, 2-d noise, "
        "batch 256, 5 critic steps per generator step for both WGANs, WGAN-GP penalty weight 0.1, each model's "
        "own optimizer; "
        + ", ".join(f"{n} generator updates for {m}" for m, n in budget["updates"].items())
        + f" (the protocol's 100,000 do not fit a CPU budget; DCGAN's update costs a fifth of a WGAN's), scored "
        f"every {budget['every']}. The metric of VEEGAN / PacGAN: of 2,500 samples, a sample is high "
        f"quality within 3 standard deviations of its nearest mode; a mode is covered when at least 1% of the "
        f"samples are high-quality samples of it. Seeds {', '.join(map(str, s.seeds))}.\n"
    )
    s.say(
        "| mixture | model | generator updates | modes covered | high quality | modes gained over the last third |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for toy in budget["toys"]:
        for m, r in s.results[toy].items():
            gain, band, rising = late_gain(r["history"], "modes_covered")
            r["late_modes_gained"], r["still_rising"] = gain, rising
            s.say(
                f"| {toy} | {m} | {budget['updates'][m]} | {pm(r, 'modes_covered', 1)} / {r['modes']} | "
                f"{pm(r, 'high_quality', 3)} | {gain:+.1f} +- {band:.1f}{' (still rising)' if rising else ''} |"
            )
            s.headline(f"{toy} {m}: modes covered of {r['modes']}", r, "modes_covered", 1)
            s.headline(f"{toy} {m}: high-quality fraction", r, "high_quality", 3)
    s.say()
    for toy in budget["toys"]:
        _collapse_claim(s, toy)


def _mode_collapse_toy(s: Study, toy, budget):
    """Trains and scores every model of MODE_COLLAPSE_MODELS on `toy` (into s.results[toy]) and draws the first
    seed's scatter plots over training."""
    columns = min(SCATTER_COLUMNS, min(budget["updates"].values()) // budget["every"])
    fig, axes = pyplot().subplots(
        len(MODE_COLLAPSE_MODELS), columns, figsize=(2.6 * columns, 2.6 * len(MODE_COLLAPSE_MODELS)), squeeze=False
    )
    real = None  # the first seed's held-out points, drawn behind every panel
    for i, (model, options) in enumerate(MODE_COLLAPSE_MODELS.items()):
        critic_steps = 1 if model == "dcgan" else 5  # a WGAN step is a critic step
        updates = budget["updates"][model]
        stage_steps = [g * critic_steps for g in range(budget["every"], updates + 1, budget["every"])]
        shown = [updates * k // columns * critic_steps for k in range(1, columns + 1)]
        history, final = {}, {}
        for seed in s.seeds:
            snapshots = s.train_stages(
                f"{model}-{toy}", model, stage_steps, {"data": toy, **TOY_PROTOCOL, **options}, seed=seed
            )
            for steps, snapshot in snapshots:
                loaded = s.load(os.path.dirname(snapshot), snapshot)
                points = loaded.sample(2500, seed=3).cpu()
                score = metrics.mode_coverage(points, toy)
                final[seed] = {"modes_covered": score["modes_covered"], "high_quality": score["high_quality"]}
                history.setdefault(steps // critic_steps, {})[seed] = final[seed]
                if seed == s.seeds[0] and steps in shown:
                    if real is None:  # makes the 500,000-point data set: once, not per panel
                        real = loaded.data().heldout[:2500]
                    title = f"{model}, {steps // critic_steps} G steps: {score['modes_covered']}/{score['modes']}"
                    _scatter(axes[i, shown.index(steps)], points, real, 3 if toy == "ring8" else 5, title)
        s.results.setdefault(toy, {})[model] = dict(
            spread(final),
            modes=score["modes"],
            options=options,
            history=[dict(spread(h), generator_steps=g) for g, h in sorted(history.items())],
        )
    s.figure(
        fig, f"mode-collapse-{toy}.png", f"{toy}: real (blue) vs generated (orange) over training, seed {s.seeds[0]}"
    )


def _scatter(ax, points, real, lim, title):
    ax.scatter(*points.T, s=1, alpha=0.3, color="tab:orange")
    ax.scatter(*real.T, s=1, color="tab:blue")  # on top: the modes are tiny
    ax.set_title(title, fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _collapse_claim(s: Study, toy):
    got = s.results[toy]
    outcome, text = verdict(values_of(got["wgan-gp"], "modes_covered"), values_of(got["dcgan"], "modes_covered"), 1)
    rising = [m for m in ("wgan-gp", "dcgan") if got[m]["still_rising"]]
    if rising:  # a claim about where training ends needs curves that have settled
        outcome, text = (
            INCONCLUSIVE,
            text + f"; {' and '.join(rising)} still gain modes over the last third of the budget",
        )
    s.claim(
        f"WGAN-GP covers more modes of {toy} than DCGAN, which collapses (each at the end of its budget)", outcome, text
    )


def label_smoothing(s: Study):
    variants = {"without": ("dcgan", {}), "with": ("dcgan-smoothing", {"label_smoothing": True})}
    wanted = ["classifier_fid"] + (["inception_fid"] if s.inception_weights else [])
    scores, rows = {label: {} for label in variants}, []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for label, (name, options) in variants.items():
        for seed in s.seeds:
            run = s.train(name, "dcgan", {**options, **epochs(s)}, seed=seed)  # "without" is dcgan(s, seed)
            loaded = s.load(run)
            got = evaluate_run(loaded, metrics=wanted, fid_samples=1000, inception_weights=s.inception_weights)
            accuracy, compared = got["classifier_accuracy"], got["fid_samples"]
            scores[label][seed] = {k: got[k] for k in wanted}
            if seed == s.seeds[0]:
                train_log, _ = curves(run)
                for ax, key in zip(axes, ("discriminator_loss", "generator_loss")):
                    ax.plot(
                        [r["step"] for r in train_log if key in r],
                        [r[key] for r in train_log if key in r],
                        label=f"{label} smoothing",
                    )
                    ax.set_title(key)
                    ax.set_xlabel("step")
                rows.append(loaded.sample(16).cpu())
    s.results = {label: spread(per_seed) for label, per_seed in scores.items()}
    s.results.update(classifier_accuracy=accuracy, images_compared={"heldout": compared, "generated": compared})
    for ax in axes:
        ax.legend()
    s.figure(
        fig,
        "label-smoothing-losses.png",
        f"DCGAN losses with and without one-sided label smoothing (seed {s.seeds[0]})",
    )
    s.figure(
        show_rows(rows, list(variants), "DCGAN samples"),
        "label-smoothing-samples.png",
        "Samples without (top) and with (bottom) label smoothing",
    )
    s.say(
        f"Classifier FID: Frechet distance between {compared} held-out and {compared} generated images in the "
        f"128 features of a small CNN trained on the same data set (held-out accuracy {accuracy:.3f}). It is "
        f"not the Inception FID and compares only runs scored by the same classifier. Lower is better.\n"
    )
    s.figure(
        seed_spread(
            {f"{k} smoothing": s.results[k] for k in variants},
            "classifier_fid",
            "classifier FID per seed (grey) and mean +- std (red)",
            "classifier FID",
        ),
        "label-smoothing-fid.png",
        "Classifier FID of every seed, with and without label smoothing",
    )
    s.say(f"- without smoothing: {pm(s.results['without'], 'classifier_fid')}")
    s.say(f"- with smoothing (real labels in [0.7, 0.9]): {pm(s.results['with'], 'classifier_fid')}\n")
    for label in variants:
        s.headline(f"DCGAN classifier FID, {label} label smoothing", s.results[label], "classifier_fid")
    if s.inception_weights:
        s.say(
            f"Inception FID: without {pm(s.results['without'], 'inception_fid')}, "
            f"with {pm(s.results['with'], 'inception_fid')}\n"
        )
    without = values_of(s.results["without"], "classifier_fid")
    smallest = 0.05 * mean_std(without)[0]
    s.claim(
        "one-sided label smoothing improves (lowers) the DCGAN's FID; an effect under 5% of the FID without "
        "it does not count",
        *verdict(without, values_of(s.results["with"], "classifier_fid"), smallest),
    )


def beta_sweep(s: Study):
    """The VAE at beta 1, 10 and 100: held-out ELBO and NLL per seed, losses, reconstructions and samples, and the
    verdict on the trade-off beta makes."""
    betas = (1, 10, 100)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    recon_rows, sample_rows, labels, scores = [], [], [], {}
    for beta in betas:
        for seed in s.seeds:
            run = (
                vae(s, seed)
                if beta == 1
                else s.train(f"beta-vae-beta{beta}", "beta-vae", {"beta": beta, **vae_budget(s)}, seed=seed)
            )
            loaded = s.load(run)
            got = evaluate_run(loaded, metrics=["elbo", "nll"], samples=50 if s.quick else 200)
            scores.setdefault(beta, {})[seed] = {
                "heldout_elbo": got["elbo"],
                "heldout_nll_importance_sampled": got["nll"],
                "recon": got["recon"],
                "kl": got["kl"],
            }
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
    s.figure(
        show_rows(recon_rows, labels, "held-out images (left 8) and reconstructions (right 8)"),
        "beta-sweep-reconstructions.png",
        "Reconstructions per beta",
    )
    s.figure(show_rows(sample_rows, labels, "samples"), "beta-sweep-samples.png", "Samples per beta")
    s.figure(
        seed_spread(
            {f"beta {b}": r for b, r in s.results.items()},
            "heldout_elbo",
            "held-out ELBO per seed (grey) and mean +- std (red)",
            "nats",
        ),
        "beta-sweep-elbo.png",
        "Held-out ELBO of every seed per beta",
    )
    _beta_sweep_table(s, betas, got)


def _beta_sweep_table(s: Study, betas, got):
    """The table of every beta's held-out numbers, collapsed posteriors named, and the verdict."""
    s.say(
        "| beta | held-out ELBO (nats) | importance-sampled NLL (nats) | reconstruction (BCE) | KL |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for beta, r in s.results.items():
        s.say(
            f"| {beta} | {pm(r, 'heldout_elbo')} | {pm(r, 'heldout_nll_importance_sampled')} | {pm(r, 'recon')} | "
            f"{pm(r, 'kl')} |"
        )
        s.headline(f"beta {beta}: held-out ELBO (nats)", r, "heldout_elbo")
    for beta, r in s.results.items():
        if r["kl"] < COLLAPSED_KL:
            s.say(
                f"\nAt beta {beta} the posterior collapsed (KL {r['kl']:.3f} nats): the latent carries no information "
                "and every sample is close to the mean image. That is the far end of the trade-off beta makes."
            )
    s.say(
        f"\nAll on the {got['images']} held-out images (`python -m genperf.evaluate`): the ELBO at beta = 1 "
        f"whatever the training beta, and the NLL, each from {got['posterior_samples']} posterior draws "
        f"(the NLL by importance sampling, a tighter bound).\n"
    )
    judged = [
        verdict(values_of(s.results[str(a)], "heldout_elbo"), values_of(s.results[str(b)], "heldout_elbo"), 1.0)
        for a, b in zip(betas, betas[1:])
    ]
    outcome = (
        NOT_REPRODUCED
        if any(v == NOT_REPRODUCED for v, _ in judged)
        else REPRODUCED
        if all(v == REPRODUCED for v, _ in judged)
        else INCONCLUSIVE
    )
    s.claim(
        "a larger beta buys a more regular latent with worse reconstructions: the held-out ELBO falls from beta "
        "1 to 10 to 100 (by 1 nat or more at each step)",
        outcome,
        "; ".join(f"beta {a} vs {b}: {text}" for (a, b), (_, text) in zip(zip(betas, betas[1:]), judged)),
    )


INSTABILITY = 0.05  # bits/dim: a rise of the held-out curve larger than this between two evaluations is a jump


def flow_stability(s: Study):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    found, held_curves = {}, {}
    for seed in s.seeds:
        run = flow(s, seed)
        train_log, held = curves(run)
        if seed == s.seeds[0]:
            shown = run
            ax.plot(
                [r["step"] for r in train_log],
                [r["bits_per_dim"] for r in train_log],
                color="0.6",
                label=f"train, seed {seed}",
            )
            every = json.load(open(os.path.join(run, "config.json")))["eval_every"]
        ax.plot(
            [r["step"] for r in held], [r["bits_per_dim"] for r in held], "o-", ms=2, label=f"held-out, seed {seed}"
        )
        values = [r["bits_per_dim"] for r in held]
        found[seed] = {
            "heldout_bits_per_dim": values[-1],
            "largest_heldout_rise": max([0.0] + [b - a for a, b in zip(values, values[1:])]),
        }
        held_curves[str(seed)] = [(r["step"], r["bits_per_dim"]) for r in held]
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.set_ylim(top=min(ax.get_ylim()[1], 2 * max(v["heldout_bits_per_dim"] for v in found.values()) + 1))
    ax.legend(fontsize=8)
    s.figure(fig, "flow-stability.png", f"RealNVP bits/dim, held-out every {every} steps, one curve per seed")
    s.results = dict(spread(found), heldout_curves=held_curves, run=shown)
    s.headline("RealNVP final held-out bits/dim", s.results, "heldout_bits_per_dim", 3)
    s.headline("RealNVP largest rise of held-out bits/dim between evaluations", s.results, "largest_heldout_rise", 3)
    rises = ", ".join(f"{v['largest_heldout_rise']:.3f}" for v in found.values())
    s.say(
        f"Final held-out bits/dim {pm(s.results, 'heldout_bits_per_dim', 3)}; the largest rise of the held-out "
        f"curve between two consecutive evaluations (every {every} steps and at each epoch's end): "
        f"{pm(s.results, 'largest_heldout_rise', 3)} bits/dim "
        f"(per seed: {rises}).\n"
    )
    s.claim(
        f"RealNVP training is unstable: its held-out bits/dim jumps up during training (by more than "
        f"{INSTABILITY} bits/dim between two evaluations)",
        *verdict(values_of(s.results, "largest_heldout_rise"), INSTABILITY, 0.0),
    )


RUNNERS = {
    "evolution": evolution,
    "interpolation": interpolation,
    "latent-sweep": latent_sweep,
    "mode-collapse": mode_collapse,
    "label-smoothing": label_smoothing,
    "beta-sweep": beta_sweep,
    "flow-stability": flow_stability,
}
