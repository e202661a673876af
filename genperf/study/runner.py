"""One experiment's runs and report: trains what it needs through genperf.fit, once per seed (or reuses the run
folders under --runs, so experiments that share models train them once), loads them back, and collects the
report's text, figures, numbers and verdicts."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil

from genperf import checkpoint, config
from genperf.errors import GenperfError
from genperf.perf import machine
from genperf.run import load_run
from genperf.runlog import atomic_write_text, pyplot
from genperf.study.stats import pm
from genperf.train import fit

STUDY_OPTIONS = "study-options.json"  # in each run folder: the training options the study trained it with
QUICK_WARNING = (
    "**Quick budgets are smoke tests**: minutes of CPU on the 8x8 `digits` (VAEs on them upsampled to 28x28) "
    "and 300-600 generator updates on ring8; they show that every experiment runs end to end, not what the "
    "full budgets find."
)


def _command(options):
    """{model, option: value} as the command line's words (a flag set to True is the bare flag)."""
    words = [options["model"]]
    for name, value in options.items():
        if name != "model":
            words += [config.OPTION[name].cli] + ([] if value is True else [str(value)])
    return " ".join(words)


class Study:
    def __init__(self, args, experiment, out, seeds):
        self.experiment, self.quick, self.out = experiment, args.quick, out
        self.runs = args.runs or os.path.join(args.out, "runs")
        self.data = {"data": "digits"} if args.quick else {"data": args.data, "data_root": args.data_root}
        self.device, self.seeds = args.device, seeds
        self.inception_weights = args.inception_weights
        self.lines, self.results = [], {}
        self.headlines, self.claims = [], []  # rows of the summary table, verdicts on the source study's claims
        os.makedirs(self.out, exist_ok=True)

    # ---- training and loading ----
    def _options(self, model, options, seed):
        """What makes a run the one asked for: model, data, options and seed (not its length, which stages grow)."""
        return {"model": model, **(self.data if "data" not in options else {}), **options, "seed": seed}

    @staticmethod
    def _check_reuse(out, wanted):
        """A run folder that an earlier study trained with other options (a quick run, an older budget) is not the
        run asked for: refuse it rather than report it."""
        path = os.path.join(out, STUDY_OPTIONS)
        if os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
            shown = " ".join(before) if isinstance(before, list) else _command(before)
            if isinstance(before, list):  # written as a command line by earlier versions
                before = config.given_options(before)
            if before != wanted:
                raise GenperfError(
                    f"{out} was trained with `{shown}`, not the `{_command(wanted)}` asked for now; give "
                    "the study another --runs folder or move that run away"
                )

    def _train(self, name, wanted, steps=None):
        """genperf.fit of the options `wanted` into RUNS/name, resuming what is there."""
        out = os.path.join(self.runs, name)
        options = dict(wanted, out=out, device=self.device, resume=checkpoint.find(out) is not None)  # resumes an
        # interrupted study where it stopped
        options.setdefault("log_every", 5)
        if steps:
            options["steps"] = steps
        command = " ".join(config.to_argv(config.make(**{k: v for k, v in options.items() if k != "resume"})))
        print(
            f"genperf.study: training {name}: python -m genperf.train {command}"
            f"{' --resume' if options['resume'] else ''}",
            flush=True,
        )
        fit(**options)
        atomic_write_text(json.dumps(wanted), os.path.join(out, STUDY_OPTIONS))
        return out

    @staticmethod
    def run_name(name, seed):
        """Seed 0 keeps the plain name, so runs trained before --seeds existed are reused."""
        return name if seed == 0 else f"{name}-seed{seed}"

    def train(self, name, model, options=None, seed=0):
        """The run directory RUNS/name[-seedN], trained unless it already finished (summary.json present)."""
        name = self.run_name(name, seed)
        out, wanted = os.path.join(self.runs, name), self._options(model, options or {}, seed)
        self._check_reuse(out, wanted)  # finished, or interrupted and resumed below
        if os.path.exists(os.path.join(out, "summary.json")):
            return out
        return self._train(name, wanted)

    def train_stages(self, name, model, stages, options=None, seed=0):
        """Trains RUNS/name[-seedN] to each step count of `stages` in turn (through resume, which continues
        bit-exactly) and keeps a copy of the checkpoint of each, beside it in the run folder:
        [(steps, checkpoint path)]."""
        name = self.run_name(name, seed)
        out, wanted, snapshots = os.path.join(self.runs, name), self._options(model, options or {}, seed), []
        self._check_reuse(out, wanted)
        for steps in stages:
            snapshot = os.path.join(out, f"checkpoint-step{steps:06d}.pt")
            if not os.path.exists(snapshot):
                self._train(name, wanted, steps=steps)
                shutil.copyfile(os.path.join(out, checkpoint.CHECKPOINT), snapshot)
            snapshots.append((steps, snapshot))
        return snapshots

    def load(self, run, checkpoint=None):
        return load_run(run, self.device, checkpoint)

    # ---- report ----
    def say(self, text=""):
        self.lines.append(text)

    def figure(self, fig, name, caption):
        path = os.path.join(self.out, name)
        _save_in_64_colours(fig, path)
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
        head += [
            f"`python -m genperf.study {self.experiment} --out {self.out} --seeds {seeds}"
            f"{' --quick' if self.quick else ''}`: {seconds:.0f} s on {ran_on(self.device)}, seeds {seeds}; runs in "
            f"`{self.runs}`; numbers in `results.json`. A value shown as m +- s is the mean over the seeds and "
            f"their sample standard deviation.",
            "",
        ]
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write("\n".join(head + self.lines) + "\n")


def ran_on(device):
    """The machine and date a report's numbers were measured on."""
    return f"{machine(device)}, {datetime.date.today().isoformat()}"


def _save_in_64_colours(fig, path):
    """64 colours are plenty for these plots and grey image grids, and make a report small enough to keep beside
    the code (the 32-row latent sweep: 1.2 MB as matplotlib writes it, 200 KB in 64 colours)."""
    from PIL import Image

    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=80, bbox_inches="tight")
    with Image.open(rendered) as image:
        image.convert("RGB").quantize(64).save(path, optimize=True)
