"""Quality per compute on real data: models trained for the same wall-clock budget, scored
by Inception FID next to the FID of real images against real images.

    python benchmarks/quality.py --data /path/to/cats --minutes 4 --image-size 32 --n 500

Protocol (printed with the table): the distinct images of the data (exact duplicates
removed) are split once, with a fixed seed, into two disjoint halves A and B. FID's
reference statistics are `n` images of A; "real vs real" scores `n` images of B against
them, each model `n` of its samples (EMA weights where the run keeps them). Every score
therefore shares one reference, one `n` and one feature network, so the real-vs-real row
is the floor a model could reach at this `n`. Models train on all the data (A and B).
A GPU user runs the same script at `--image-size 64` with the presets' own length
(`--minutes 0 --full`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.config import load_config  # noqa: E402
from lib.data import (  # noqa: E402
    ImageData,
    distinct_indices,  # noqa: E402
    load_dataset,
    to_uint8,
)
from lib.families.base import fixed_generator  # noqa: E402
from lib.metrics import Evaluator, protocol_summary  # noqa: E402
from lib.training.evaluation import rebuild  # noqa: E402
from lib.training.loop import train  # noqa: E402

# model name -> (preset, overrides that size it for a CPU budget at small image sizes)
MODELS = {
    "dcgan": ("configs/dcgan_train.json", []),  # the course preset, unchanged but for size
    "ddpm": ("configs/ddpm_cats.json", [
        "model.args.base_channels=32", "model.args.channel_mults=[1,2,2]",
        "model.args.num_res_blocks=1", "model.args.dropout=0.0", "trainer.batch_size=64",
        "trainer.ema_decay=0.999"]),
}


def halves(data: ImageData, n: int, seed: int) -> tuple[ImageData, ImageData, dict]:
    """Two disjoint sets of `n` distinct images each, and what was counted on the way."""
    distinct = distinct_indices(data.images)
    if len(distinct) < 2 * n:
        raise SystemExit(f"--n {n} needs {2 * n} distinct images; the data has {len(distinct)}")
    pick = distinct[torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))]
    a, b = (ImageData(data.images[idx], None, None, data.name) for idx in (pick[:n],
                                                                         pick[n:2 * n]))
    counts = {"files": len(data), "distinct": len(distinct),
              "duplicates": len(data) - len(distinct)}
    return a, b, counts


def train_model(name: str, args, out_root: Path) -> Path:
    preset, sizing = MODELS[name]
    overrides = [f"name=quality_{name}_{args.image_size}px", "data.dataset=cats",
                 f"data.image_size={args.image_size}", f"data.path={json.dumps(str(args.data))}",
                 f"data.root={json.dumps(str(args.data_root))}",
                 "trainer.eval_samples=0", "wandb.mode=disabled", f"trainer.device={args.device}"]
    if not args.full:
        # the budget ends the run: enough epochs that it never ends first
        overrides += [*sizing, "trainer.epochs=1000", "trainer.iterations_per_epoch=100",
                      "trainer.save_period=1000", f"trainer.max_minutes={args.minutes}",
                      "trainer.log_every_step=100"]
    cfg = load_config(ROOT / preset, overrides)
    print(f"[{name}] training {cfg.name} for {args.minutes:g} min ...", flush=True)
    return train(cfg, out_root=out_root, progress=False)


@torch.inference_mode()
def score(run_dir: Path, evaluator: Evaluator, n: int, seed: int) -> dict:
    rebuilt = rebuild(run_dir)
    t0 = time.perf_counter()
    fake = to_uint8(rebuilt.family.sample(rebuilt.parts, n, None, fixed_generator(seed)))
    sample_s = time.perf_counter() - t0
    result = evaluator.evaluate(fake)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**result, "steps": summary["step"], "train_min": summary["train_seconds"] / 60,
            "images_seen": summary["images_seen"],
            "images_per_sec": summary["images_seen"] / max(summary["train_seconds"], 1e-9),
            "sample_ms_per_image": 1000 * sample_s / n,
            "sampled_with": "ema" if rebuilt.parts.ema else "raw",
            "grid": str(run_dir / "final_grid.png")}


def table(rows: dict[str, dict]) -> str:
    head = ("| model | steps | train min | images/s | FID (95% interval) | KID ± std | "
            "diversity | sampling ms/img | weights |")
    lines = [head, "|" + "---|" * 9]
    for name, r in rows.items():
        interval = (f" ({r['fid_low']:.1f}-{r['fid_high']:.1f})" if "fid_low" in r else "")
        kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if "kid" in r else "-"
        lines.append(
            f"| {name} | {r.get('steps', '-')} | {_f(r.get('train_min'), 1)} | "
            f"{_f(r.get('images_per_sec'), 0)} | {r['fid']:.1f}{interval} | {kid} | "
            f"{r['diversity']:.2f} | {_f(r.get('sample_ms_per_image'), 2)} | "
            f"{r.get('sampled_with', '-')} |")
    return "\n".join(lines)


def _f(v, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cat faces folder (or its parent)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per model")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=500, help="images per side of every FID")
    p.add_argument("--models", default="dcgan,ddpm", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--inception-weights", default=None,
                   help="a local FID Inception file (default: the places lib.metrics searches)")
    p.add_argument("--device", default="auto")
    p.add_argument("--full", action="store_true", help="the presets' own length (a GPU run)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    data = load_dataset("cats", args.image_size, root=args.data_root, path=str(args.data))
    half_a, half_b, counts = halves(data, args.n, args.seed)
    evaluator = Evaluator(half_a, features="inception", num_samples=args.n,
                          cache_dir=args.data_root / "cache",
                          weights_path=args.inception_weights, reference="half A of the data",
                          seed=args.seed)
    rows = {"real vs real (half B)": evaluator.evaluate(half_b.images)}
    print(f"real vs real FID {rows['real vs real (half B)']['fid']:.1f} "
          f"({time.perf_counter() - t0:.0f} s with data and reference features)", flush=True)

    for name in models:
        run_dir = train_model(name, args, args.out)
        rows[name] = score(run_dir, evaluator, args.n, args.seed + 2)
        print(f"[{name}] FID {rows[name]['fid']:.1f} after {rows[name]['steps']} steps "
              f"({rows[name]['train_min']:.1f} min)", flush=True)

    protocol = protocol_summary(next(iter(rows.values()))["protocol"])
    text = (f"{table(rows)}\n\nFID protocol: {protocol}; data: {counts['files']} files, "
            f"{counts['distinct']} distinct ({counts['duplicates']} exact duplicates); "
            f"{args.image_size} px; budget {args.minutes:g} min per model "
            f"({'preset length' if args.full else 'wall clock'}); device {args.device}; "
            f"total {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("\n" + text)
    (args.out / "quality.md").write_text(text)
    (args.out / "quality.json").write_text(json.dumps(
        {"rows": rows, "counts": counts, "args": {k: str(v) for k, v in vars(args).items()}},
        indent=2, default=str) + "\n")
    for name in models:
        print(f"look at the grid: {rows[name]['grid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
