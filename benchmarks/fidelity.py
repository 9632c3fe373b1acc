"""Issue 9: the error of the final sample against the tolerance (see :mod:`picard.cli.fidelity`).

python benchmarks/fidelity.py [--samples 64] [--out benchmarks/results/fidelity]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from picard.cli import fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(fidelity.HEADER, flush=True)
    rows = fidelity.run(args.samples, log=lambda line: print(line, flush=True))
    fidelity.write(rows, args.out)


if __name__ == "__main__":
    main()
