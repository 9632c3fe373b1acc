"""The GPU benchmark script runs end to end (tiny configs, CPU), so it works when a GPU
machine is lent; the harness the benchmark scripts share does what its examples say."""

import doctest
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts' `from harness import ...`

import harness  # noqa: E402
import harness.results  # noqa: E402
import harness.seeds  # noqa: E402


@pytest.mark.parametrize("module", [harness, harness.results, harness.seeds])
def test_harness_examples(module):
    assert module.__doc__
    for name in module.__all__:
        assert "Example:" in getattr(module, name).__doc__, name
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_gpu_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rows = module.main(
            ["--smoke", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path / "g")]
        )
    finally:
        torch.set_num_threads(threads)
    assert [r["model"] for r in rows] == ["sd2-unet"] * 4 + ["policy-unet1d"]
    assert all(r["sweeps"] <= int(r["sampler"].split("-")[1]) for r in rows)
    assert all(r["relative_rms_error"] < 0.05 for r in rows)
    saved = json.loads((tmp_path / "g.json").read_text())
    assert len(saved) == len(rows) + 2 and (tmp_path / "g.md").exists()  # + small states
    assert "backward by sweeps" in (tmp_path / "g.md").read_text()


def test_interleaved_timing_alternates_the_runs_and_skips_the_warmup():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from harness import interleaved

    order: list[str] = []
    medians, results = interleaved(
        {"a": lambda p: order.append(p) or "A", "b": lambda p: order.append(p) or "B"},
        2,
        setup=lambda label: label,
        warmup=1,
    )
    assert order == ["a", "b"] * 3 and results == {"a": "A", "b": "B"}
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())
