"""The command line end to end on small settings; exit codes and messages of bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from picard.cli.main import main


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_end_to_end(tmp_path, capsys):
    code, out, err = run(
        [
            "demo",
            "--steps",
            "50",
            "--repeats",
            "1",
            "--seeds",
            "1",
            "--samples",
            "64",
            "--images",
            "4",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    for text in (
        "moons (2-D MLP)",
        "digits (UNet)",
        "sweeps",
        "speedup",
        "sliced W1",
        "Fréchet distance",
        "sequential",
        "picard",
    ):
        assert text in out
    for name in ("moons.png", "digits.png", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 1000
    # issue 22, item 4: every image's deviation and its two labels, and a summary line
    images = [line for line in out.splitlines() if line.strip().startswith("image ")]
    assert len(images) == 4 and all("relative deviation" in line for line in images)
    assert "labels changed; the worst image" in out


@pytest.mark.parametrize("model", ["moons", "gmm", "digits"])
def test_sample_is_the_sequential_sample_at_tol_zero(model, tmp_path, capsys):
    args = ["sample", "--model", model, "--steps", "20", "--count", "3", "--seed", "4"]
    code, out, _ = run([*args, "--tol", "0", "--out", str(tmp_path / "p.pt")], capsys)
    assert code == 0 and "sweeps for 20 steps" in out
    code, out, _ = run([*args, "--sequential", "--out", str(tmp_path / "s.pt")], capsys)
    assert code == 0 and "20 sequential steps" in out
    par, seq = torch.load(tmp_path / "p.pt"), torch.load(tmp_path / "s.pt")
    assert par.shape[0] == 3
    torch.testing.assert_close(par, seq, rtol=1e-4, atol=1e-4)


def test_sample_verify_prints_the_error_estimate(tmp_path, capsys):
    args = ["sample", "--model", "moons", "--steps", "50", "--count", "8", "--seed", "1"]
    code, out, _ = run([*args, "--verify", "--out", str(tmp_path / "v.pt")], capsys)
    assert code == 0
    estimate = float(re.search(r"estimated relative error ([0-9.e+-]+),", out).group(1))
    code, out, _ = run([*args, "--tol", "0", "--out", str(tmp_path / "e.pt")], capsys)
    verified, exact = torch.load(tmp_path / "v.pt"), torch.load(tmp_path / "e.pt")
    rel = float((verified - exact).norm(dim=1).div(exact.norm(dim=1)).max())
    assert 0 < estimate <= 0.01  # met the default tol
    assert rel <= estimate  # and the refined sample is returned


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "euler", "euler-ancestral"])
def test_sample_schedulers_and_outputs(scheduler, tmp_path, capsys):
    for suffix in (".png", ".npy"):
        path = tmp_path / f"out{suffix}"
        code, _, err = run(
            [
                "sample",
                "--model",
                "moons",
                "--scheduler",
                scheduler,
                "--steps",
                "15",
                "--count",
                "8",
                "--out",
                str(path),
            ],
            capsys,
        )
        assert code == 0, err
        assert path.stat().st_size > 0
    assert np.load(tmp_path / "out.npy").shape == (8, 2)


def test_sample_a_pipeline_folder(tmp_path, capsys):
    from picard.models.tiny import tiny_unet_pipeline

    tiny_unet_pipeline("ddim").save_pretrained(tmp_path / "pipe")
    code, out, err = run(
        [
            "sample",
            "--pipeline",
            str(tmp_path / "pipe"),
            "--steps",
            "10",
            "--count",
            "2",
            "--out",
            str(tmp_path / "img.png"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "DDIMPipeline: " in out and "sweeps for 10 steps" in out
    from PIL import Image

    assert Image.open(tmp_path / "img.png").size == (16, 8)


def test_bench_quick(tmp_path, capsys):
    code, out, err = run(
        ["bench", "--models", "gmm", "--steps", "20", "--repeats", "1", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 0, err
    assert "| gmm | ddpm-20 |" in out and "ParaDiGMS" in out
    for name in (
        "bench.json",
        "bench.md",
        "speedup_vs_window.png",
        "sweeps_vs_tol.png",
        "error_vs_tol.png",
    ):
        assert (tmp_path / name).stat().st_size > 0


BAD = [
    (["sample", "--model", "nope"], "unknown model 'nope'; choose one of moons, digits, gmm"),
    (["sample", "--scheduler", "plms-9"], "unknown scheduler 'plms-9'; choose one of ddpm"),
    (["sample", "--count", "-2"], "argument --count: count must be >= 1, got -2"),
    (["sample", "--steps", "0"], "argument --steps: steps must be >= 1, got 0"),
    (["sample", "--tol", "-1"], "argument --tol: tol must be >= 0, got -1"),
    (["sample", "--window", "many"], "argument --window: window must be an integer"),
    (["sample", "--out", "/proc/picard/x.png"], "cannot write /proc/picard/x.png"),
    (["sample", "--out", "samples.txt"], "--out must end in .png, .pt, .npy"),
    (["sample", "--pipeline", "/nonexistent/pipe"], "--pipeline /nonexistent/pipe is not a folder"),
    (["sample", "--model", "moons", "--pipeline", "x"], "not allowed with argument"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--out", "/proc/picard-demo"], "cannot write to /proc/picard-demo"),
    (["bench", "--models", "gmm,cats"], "unknown model 'cats'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        code = main(args)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_picard_help():
    out = subprocess.run(
        [sys.executable, "-m", "picard", "sample", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--pipeline" in out and "--scheduler" in out


def test_a_failed_run_leaves_no_file(tmp_path, capsys):
    out = tmp_path / "x.npy"
    code, _, err = run(["sample", "--model", "moons", "--steps", "5000", "--out", str(out)], capsys)
    assert code == 2 and "num_inference_steps" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("build", "extra"),
    [
        ("picard.models.tiny_sd_variants:tiny_sd_img2img", ["--image", "IMAGE"]),
        ("picard.models.tiny_sd_variants:tiny_sd_inpaint", ["--image", "IMAGE", "--mask", "MASK"]),
        ("picard.models.tiny_pixart_dit:tiny_dit", ["--class-label", "3"]),
    ],
    ids=["img2img", "inpaint", "dit"],
)
def test_sample_pipeline_folders_of_every_input_kind(tmp_path, capsys, build, extra):
    """--pipeline takes any registered pipeline: the inputs follow its registry entry."""
    import importlib

    from PIL import Image

    module, name = build.split(":")
    pipe = getattr(importlib.import_module(module), name)()
    pipe.save_pretrained(tmp_path / "pipe")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "image.png")
    Image.new("L", (16, 16), 255).save(tmp_path / "mask.png")
    files = {"IMAGE": str(tmp_path / "image.png"), "MASK": str(tmp_path / "mask.png")}
    args = ["sample", "--pipeline", str(tmp_path / "pipe"), "--steps", "6", "--count", "2"]
    args += [files.get(a, a) for a in extra] + ["--out", str(tmp_path / "img.pt")]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert f"{type(pipe).__name__}: " in out and "sweeps for " in out  # img2img: strength 0.8
    if "--image" in extra:  # the inputs are required, named
        code, _, err = run([a for a in args if a not in extra and a not in files.values()], capsys)
        assert code == 2 and "needs --image" in err


def test_pipeline_outputs_of_video_and_audio_are_written_as_arrays(tmp_path):
    from types import SimpleNamespace

    from picard.cli.common import CLIError
    from picard.cli.sample import _output

    frames = SimpleNamespace(images=None, frames=torch.zeros(1, 3, 3, 4, 4))
    assert _output(frames, "WanPipeline", tmp_path / "v.pt").shape == (1, 3, 3, 4, 4)
    audio = SimpleNamespace(audios=torch.zeros(1, 2, 64))
    assert _output(audio, "StableAudioPipeline", tmp_path / "a.npy").shape == (1, 2, 64)
    with pytest.raises(CLIError, match=r"returns frames: write them with --out ending \.pt"):
        _output(frames, "WanPipeline", tmp_path / "v.png")
    with pytest.raises(CLIError, match="returned no images, frames or audios"):
        _output(SimpleNamespace(), "X", tmp_path / "x.pt")


def test_samples_per_prompt_take_the_pipelines_own_name():
    from picard.cli.sample import _per_prompt

    class Video:
        def __call__(self, prompt=None, num_videos_per_prompt=1): ...

    class Audio:
        def __call__(self, prompt=None, num_waveforms_per_prompt=1): ...

    assert _per_prompt(Video()) == "num_videos_per_prompt"
    assert _per_prompt(Audio()) == "num_waveforms_per_prompt"
