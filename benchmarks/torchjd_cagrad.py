"""torchjd's CAGrad aggregation timed against torchjd's own plain sum over tasks (PyTorch, CPU).

Run by `run_benchmarks.py --sections torchjd` with an interpreter that has torch and torchjd
(installed only for this benchmark: `make bench-env`); prints one JSON list. Each library is
compared with its own plain sum, so the two ratios can be set side by side.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torchjd.aggregation import CAGrad, Sum


def paired_ratio(numerator, denominator, rounds: int) -> float:
    numerator()
    denominator()
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        numerator()
        middle = time.perf_counter()
        denominator()
        ratios.append((middle - start) / (time.perf_counter() - middle))
    ratios.sort()
    return ratios[len(ratios) // 2]


def main(sizes: list[int], task_counts: list[int], rounds: int) -> None:
    torch.manual_seed(0)
    cagrad, plain = CAGrad(c=0.5), Sum()
    rows = []
    for size in sizes:
        for k in task_counts:
            matrix = torch.randn(k, size)
            matrix = matrix + 0.3 * matrix[:1]
            rows.append(
                {
                    "P": size,
                    "K": k,
                    "cagrad_over_sum": paired_ratio(
                        lambda m=matrix: cagrad(m), lambda m=matrix: plain(m), rounds
                    ),
                }
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    sizes = [int(float(s)) for s in sys.argv[1].split(",")]
    counts = [int(k) for k in sys.argv[2].split(",")]
    main(sizes, counts, int(sys.argv[3]) if len(sys.argv) > 3 else 7)
