"""The GPU benchmark script runs end to end (tiny configs, CPU), so it works when a GPU
machine is lent."""

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


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
    assert len(saved) == len(rows) and (tmp_path / "g.md").exists()
