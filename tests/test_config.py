"""genperf.config: one table of options from which the command line, the Python API and config.json derive."""

import pytest

import genperf
from genperf import config
from genperf.errors import GenperfError
from genperf.families import FAMILIES, MODELS


@pytest.mark.parametrize(
    "model, options",
    [
        ("realnvp", dict(data="digits", mid_channels=8, checkpointing="block", amp=True, lr=3e-4, out="x")),
        ("dcgan", dict(data="ring8", label_smoothing=True, download=False, ema=0.99, batch_size=32)),
        ("wgan-gp", dict(data="digits", gp_weight=0.1, critic_iters=3, steps=7, fsdp=True, nproc=2)),
        ("beta-vae", dict(data="celeba", loader="torch", workers=0, beta=8.0, image_size=32)),
    ],
)
def test_a_config_made_in_python_is_the_one_its_command_line_parses_to(model, options):
    made = config.make(model, **options)
    assert vars(config.parse_args(config.to_argv(made))) == vars(made)
    assert all(getattr(made, k) == v for k, v in options.items())


def test_per_model_defaults_come_from_the_families():
    for family in FAMILIES:
        for model, defaults in family.models.items():
            for device in ("cpu", "cuda"):
                made = config.make(model, device=device)
                on_device = defaults | defaults.get(device, {})
                assert all(getattr(made, k) == v for k, v in on_device.items() if k not in ("help", "cpu"))
    assert config.make("dcgan").lr == 2e-4 and config.make("vae").latent_dim == 20 and config.make("realnvp").lr == 5e-3


def test_realnvp_trains_at_batch_16_on_a_cpu_and_64_elsewhere_unless_told():
    assert config.make("realnvp", device="cpu").batch_size == 16
    assert config.make("realnvp", device="cuda:1").batch_size == 64
    assert config.make("dcgan", device="cpu").batch_size == config.make("vae", device="cpu").batch_size == 64
    assert config.parse_args(["realnvp", "--device", "cpu", "--batch-size", "64"]).batch_size == 64
    assert "realnvp on a CPU 16" in config.OPTION["batch_size"].help


def test_every_option_has_one_flag_and_a_help():
    flags = [option.cli for option in config.OPTIONS]
    assert len(flags) == len(set(flags)) and all(option.help for option in config.OPTIONS)
    assert set(MODELS) == {"dcgan", "wgan-gp", "wgan", "vae", "beta-vae", "realnvp"}


def test_options_that_mean_nothing_for_a_model_are_refused_and_left_out_of_config_json():
    with pytest.raises(GenperfError, match="--label-smoothing does not apply to wgan on digits"):
        config.check(config.make("wgan", data="digits", label_smoothing=True))
    applicable = config.applicable(config.make("realnvp", data="digits"))
    assert "realnvp" == applicable["model"] and not {"beta", "latent_dim", "critic_iters", "loader"} & set(applicable)


def test_the_python_api_trains_and_says_what_is_wrong(tmp_path):
    summary = genperf.fit("vae", data="digits", steps=3, batch_size=32, out=str(tmp_path / "run"))
    assert summary["steps"] == 3 and summary["model"] == "vae"
    assert genperf.fit(resume=True, out=str(tmp_path / "run"), steps=5)["steps"] == 5
    with pytest.raises(GenperfError, match="unknown option epoch"):
        genperf.fit("vae", data="digits", epoch=1)
    with pytest.raises(GenperfError, match="unknown model 'gan3000'"):
        genperf.fit("gan3000")


@pytest.mark.parametrize(
    "argv, ddp, fsdp",
    [
        (["--nproc", "2"], True, False),  # several processes alone: data parallel
        (["--nproc", "1"], False, False),
        (["--ddp"], True, False),
        (["--fsdp", "--nproc", "2"], False, True),
        ([], False, False),
    ],
)
def test_the_parallel_mode_follows_the_options_given(argv, ddp, fsdp):
    parsed = config.parse_args(["vae", *argv])
    made = config.make("vae", **config.given_options(argv))
    assert (parsed.ddp, parsed.fsdp) == (made.ddp, made.fsdp) == (ddp, fsdp)
    assert vars(config.parse_args(config.to_argv(parsed))) == vars(parsed)


def test_a_resumed_run_switches_mode_by_the_one_named(monkeypatch):
    stored = vars(config.make("vae", ddp=True, nproc=2))
    monkeypatch.setattr(config.checkpoint, "stored_meta", lambda out: {"config": stored})
    assert config.resumed("x", {"fsdp": True}).ddp is False
    assert config.resumed("x", {"nproc": 1}).ddp is False
    assert config.resumed("x", {"nproc": 4}).ddp is True
    with pytest.raises(GenperfError, match="choose one"):
        config.check(config.make("vae", ddp=True, fsdp=True))


def test_a_per_rank_elastic_batch_needs_a_run_sized_by_steps():
    with pytest.raises(GenperfError, match="--elastic-batch per-rank needs a run sized by --steps"):
        config.check(config.parse_args(["vae", "--elastic-batch", "per-rank"]))
    config.check(config.parse_args(["vae", "--elastic-batch", "per-rank", "--steps", "10"]))
