"""The conditional rows of the ablation: does a sample obey its class?

The CVAE (its label entering the decoder's input only, as before issue 19, or every decoder
stage, today's default) and the class-conditional DDPM (sampled without and with
classifier-free guidance), trained on the labelled data at hand (digits, grey; shapes, RGB)
for the same number of steps each, then scored on one protocol per dataset:

- class accuracy: how often a classifier that this benchmark trains on real images (of all
  the data; its held-out accuracy is printed as the ceiling) reads a sample as the class it
  was drawn for, classes in equal shares;
- label sensitivity (lib.metrics.label_sensitivity): the distance between decodes of one z
  under different labels over the distance between different z under one label; ~0 when the
  label is ignored. The CVAE only (the DDPM's samples are not one function of one noise);
- FID in the classifier's features against half A of the data, with the real-vs-real floor
  (half B), and the diversity score.

    python benchmarks/conditional.py [--data digits,shapes] [--image-size 16] [--steps 600]
        [--n 500] [--threads 1] [--out outputs/conditional] [--only ddpm] [--set KEY=VALUE]

Every row saves its final grid and a grid of the scored samples (one class per row) in its
run folder: look at them before believing a number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.config import Config, load_config  # noqa: E402
from lib.core import viz  # noqa: E402
from lib.data import ImageData, load_dataset, to_uint8  # noqa: E402
from lib.families.base import fixed_generator, unwrap  # noqa: E402
from lib.metrics import Evaluator, protocol_summary  # noqa: E402
from lib.metrics.classifier import load_classifier  # noqa: E402
from lib.training.evaluation import rebuild  # noqa: E402
from lib.training.loop import train  # noqa: E402

# variant -> (preset, overrides); every run is --steps long on the same data and size
VARIANTS = {
    "cvae, label at the decoder input only": ("configs/cvae_demo.json",
                                              ["model.args.label_every_stage=false"]),
    "cvae, label at every decoder stage (default)": ("configs/cvae_demo.json", []),
    "ddpm class-conditional": ("configs/ddpm_demo.json", []),
}


def guidance_scales(cfg: Config, more: list[float]) -> dict[str, float]:
    """Row label -> the classifier-free guidance scale the DDPM's weights are sampled at:
    none, the preset's, and any asked for."""
    preset = cfg.model.args.get("guidance_scale", 1.0)
    return {"no guidance (scale 1)": 1.0, f"guidance {preset:g} (the preset's)": preset,
            **{f"guidance {scale:g}": scale for scale in more}}


def split(data: ImageData, n: int, seed: int) -> tuple[ImageData, ImageData]:
    """Two disjoint labelled sets of `n` images: the FID reference (A) and the floor (B)."""
    if len(data) < 2 * n:
        raise SystemExit(f"--n {n} needs {2 * n} images; {data.name} has {len(data)}")
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return tuple(ImageData(data.images[idx], data.labels[idx], data.class_names, data.name)
                 for idx in (pick[:n], pick[n:2 * n]))


def variant_config(variant: str, dataset: str, args) -> Config:
    preset, options = VARIANTS[variant]
    tag = variant.split(",")[0].replace(" ", "_")
    return load_config(ROOT / preset, [
        f"name=conditional_{dataset}_{tag}", f"data.dataset={dataset}",
        f"data.image_size={args.image_size}", f"data.root={json.dumps(str(args.data_root))}",
        "trainer.epochs=1", f"trainer.iterations_per_epoch={args.steps}",
        "trainer.save_period=1", f"trainer.log_every_step={args.steps}",
        "trainer.eval_samples=0", f"trainer.seed={args.seed}", "wandb.mode=disabled",
        *options, *args.set])


@torch.inference_mode()
def score(run_dir: Path, evaluator: Evaluator, classifier, n: int, seed: int,
          guidance: float | None = None, tag: str = "") -> dict:
    rebuilt = rebuild(run_dir)
    family, parts = rebuilt.family, rebuilt.parts
    if guidance is not None:
        for net in (parts.sampling_weights("model"), parts.nets["model"]):
            unwrap(net).guidance_scale = guidance
    k = len(evaluator.class_names)
    labels = torch.arange(n) % k
    t0 = time.perf_counter()
    fake = to_uint8(family.sample(parts, n, labels, fixed_generator(seed)))
    sample_s = time.perf_counter() - t0
    grid = None
    if family.label_grid is not None:
        grid = to_uint8(family.label_grid(parts, fixed_generator(seed + 1)))
    result = evaluator.evaluate(fake, labels, None, grid)
    by_class = labels.argsort(stable=True)  # one class per row of the saved grid
    per_row = min(n // k, 10)
    rows = torch.cat([fake[by_class][c * (n // k):c * (n // k) + per_row] for c in range(k)])
    viz.save_png(viz.make_grid(rows, nrow=per_row), Path(run_dir) / f"scored{tag}.png",
                 scale=max(1, 256 // (per_row * fake.shape[-1])))
    read = classifier.logits(fake).argmax(1)
    return {**result, "class_accuracy": float((read == labels).float().mean()),
            "sample_ms_per_image": 1000 * sample_s / n,
            "sampled_with": parts.sampled_with(family.sampling_net)}


def run_dataset(dataset: str, args) -> dict[str, dict]:
    data = load_dataset(dataset, args.image_size, root=args.data_root)
    classifier, held_out, _ = load_classifier(data, args.data_root / "cache")
    half_a, half_b = split(data, args.n, args.seed)
    evaluator = Evaluator(half_a, features="classifier", num_samples=args.n,
                          cache_dir=args.data_root / "cache", reference="half A of the data",
                          seed=args.seed)
    rows = {"real vs real (half B)": {
        **evaluator.evaluate(half_b.images, half_b.labels),
        "class_accuracy": held_out, "note": "class accuracy: the classifier's held-out"}}
    print(f"[{dataset}] classifier held-out accuracy {held_out:.3f}; real vs real FID "
          f"{rows['real vs real (half B)']['fid']:.2f}", flush=True)
    for variant in [v for v in VARIANTS if args.only in v]:
        cfg = variant_config(variant, dataset, args)
        cpu = time.process_time()
        run_dir = train(cfg, out_root=args.out / dataset, progress=False)
        extra = {"run_cpu_s_per_step": (time.process_time() - cpu) / cfg.total_steps,
                 "steps": cfg.total_steps, "batch": cfg.trainer.batch_size,
                 "run_dir": str(run_dir)}
        if cfg.family == "ddpm":
            for label, scale in guidance_scales(cfg, args.guidance).items():
                rows[f"{variant}, {label}"] = {
                    **score(run_dir, evaluator, classifier, args.n, args.seed + 2, scale,
                            tag=f"_guidance{scale:g}"), **extra}
        else:
            rows[variant] = {**score(run_dir, evaluator, classifier, args.n, args.seed + 2),
                             **extra}
        for name in [r for r in rows if r.startswith(variant)]:
            print(f"[{dataset}] {name}: class accuracy {rows[name]['class_accuracy']:.3f}, "
                  f"FID {rows[name]['fid']:.2f}", flush=True)
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = ["| variant | class accuracy | label sensitivity | FID (95% interval) | diversity "
             "| CPU s/step (whole run) | steps | batch | weights |", "|" + "---|" * 9]
    for name, r in rows.items():
        sens = f"{r['label_sensitivity']:.2f}" if "label_sensitivity" in r else "-"
        cpu = f"{r['run_cpu_s_per_step']:.3f}" if "run_cpu_s_per_step" in r else "-"
        lines.append(f"| {name} | {r['class_accuracy']:.1%} | {sens} | {r['fid']:.2f} "
                     f"({r['fid_low']:.2f}-{r['fid_high']:.2f}) | {r['diversity']:.2f} | {cpu} "
                     f"| {r.get('steps', '-')} | {r.get('batch', '-')} "
                     f"| {r.get('sampled_with', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits,shapes", help="comma list of labelled datasets")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=600, help="training steps of every run")
    p.add_argument("--n", type=int, default=500, help="images per side of every FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="the variants whose name contains this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable)")
    p.add_argument("--guidance", type=float, action="append", default=[], metavar="SCALE",
                   help="a further guidance scale to score the DDPM at (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "conditional")
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # kept by training's choose_threads
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, text = {}, []
    for dataset in [d for d in args.data.split(",") if d]:
        rows = run_dataset(dataset, args)
        results[dataset] = rows
        protocol = protocol_summary(rows["real vs real (half B)"]["protocol"])
        text.append(f"### {dataset}, {args.image_size} px\n\n{table(rows)}\n\n"
                    f"FID protocol: {protocol}\n")
        (args.out / "conditional.partial.json").write_text(json.dumps(results, default=str))
    text.append(f"{args.steps} steps per run, seed {args.seed}, {torch.get_num_threads()} "
                f"threads; total {(time.perf_counter() - t0) / 60:.1f} min\n")
    print("\n" + "\n".join(text))
    (args.out / "conditional.md").write_text("\n".join(text))
    (args.out / "conditional.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
