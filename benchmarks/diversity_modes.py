"""What the collapse watch's diversity score reads for a generator collapsed to k modes.

The score (lib.metrics: mean pairwise Inception distance of the samples over the real
data's) is what `trainer.collapse_fraction` is compared with. Here the "samples" are k
distinct real images of the data, each drawn n/k times at random: a generator that has
dropped every mode but k, drawing each perfectly. Pairs within a mode are at distance 0,
so the score is about (1 - 1/k) x the spread of those k images; this prints the measured
value on the real data's Inception features, the numbers a guard threshold is picked from.

    python benchmarks/diversity_modes.py --data /path/to/cats --image-size 32 --n 500

The features are quality.py's reference (half A of the distinct images, cached), so no
network runs after the first time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (benchmarks/quality.py: its protocol and data split)

from lib.metrics.scores import mean_pairwise_distance  # noqa: E402


def collapsed_diversity(features: torch.Tensor, k: int, n: int, repeats: int,
                        seed: int = 0) -> tuple[float, float, float]:
    """The score of n samples drawn from k modes (k distinct rows of `features`, a new
    random set each of `repeats` times) over the score of all of `features`: the mean, the
    lowest and the highest of the `repeats`."""
    real = mean_pairwise_distance(features)
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(repeats):
        modes = features[torch.randperm(len(features), generator=g)[:k]]
        draws = modes[torch.randint(k, (n,), generator=g)]
        scores.append(mean_pairwise_distance(draws) / real)
    return sum(scores) / len(scores), min(scores), max(scores)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cat faces folder")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=500, help="real images (half A), and samples")
    p.add_argument("--modes", default="1,2,3,5,10,50", help="comma list of k")
    p.add_argument("--repeats", type=int, default=20, help="random mode sets per k")
    p.add_argument("--data-root", type=Path, default=quality.ROOT / "data")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    *_, evaluator = quality.reference(args.data, args.image_size, args.n, args.seed,
                                      args.data_root, args.inception_weights)
    features = evaluator.real_features.double()
    print(f"| modes k | diversity (mean, min-max over {args.repeats} sets) | 1 - 1/k |")
    print("|---|---|---|")
    for k in (int(m) for m in args.modes.split(",")):
        if not 1 <= k <= len(features):
            raise SystemExit(f"--modes: k={k} must be in [1, {len(features)}]")
        mean, low, high = collapsed_diversity(features, k, args.n, args.repeats)
        print(f"| {k} | {mean:.2f} ({low:.2f}-{high:.2f}) | {1 - 1 / k:.2f} |")
    print(f"\n{args.n} samples from k of the {len(features)} real images of half A "
          f"({args.image_size} px), Inception features; 1.00 = the real images' own spread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
