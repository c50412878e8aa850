"""The end of benchmarks/gpu_check.sh: every figure of its folder in summary.md + summary.json.

Reads what the steps left in OUT (steps.tsv, env.json, tests.xml, throughput.json, the
cats run folder) and writes OUT/summary.md, OUT/summary.json and OUT/throughput.png;
prints the Markdown. A step that failed or left nothing is reported as such, never
guessed.

    python benchmarks/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FULL_RUN_ITERATIONS = 100_000  # configs/dcgan_train.json: 100 epochs x 1000 iterations
TARGET_SPEEDUP = 5.0  # project / reference on the same GPU
TARGET_MINUTES = 15.0  # the full cats run on an H200-class GPU


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_steps(out: Path) -> list[dict]:
    rows = []
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, seconds = line.split("\t")
            rows.append({"step": name, "rc": int(rc), "seconds": int(seconds)})
    return rows


def read_tests(path: Path) -> dict | None:
    """pytest's JUnit XML -> counts and the failing tests' names."""
    if not path.is_file():
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed, skip_reasons = [], set()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif (skipped := case.find("skipped")) is not None:
            counts["skipped"] += 1
            skip_reasons.add(skipped.get("message", ""))
        else:
            counts["passed"] += 1
    return {**counts, "failed_tests": failed, "skip_reasons": sorted(skip_reasons)}


def read_cats(run: Path) -> dict | None:
    """images/s of the cats run: the logged windows after the first (cuDNN autotuning and
    the first snapshots fall in that one), and the full run projected from them."""
    summary = read_json(run / "summary.json")
    if summary is None or not (run / "history.jsonl").is_file():
        return None
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    windows = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    steady = windows[1:] or windows
    ips = statistics.median(steady)
    batch = summary["images_seen"] / max(summary["step"], 1)
    return {"iterations": summary["step"], "finished": summary["finished"],
            "precision": summary["precision"],
            "device": summary["device"], "images_per_sec": ips,
            "images_per_sec_overall": summary["images_seen"] / summary["train_seconds"],
            "batch": batch,
            "projected_full_run_minutes": FULL_RUN_ITERATIONS * batch / ips / 60}


def plot_throughput(throughput: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(throughput["rows"])
    values = [throughput["rows"][k]["ips"] for k in labels]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(labels[::-1], values[::-1], color="tab:blue")
    ax.set_xlabel("images / s (median of the rounds)")
    ax.set_title(f"DCGAN 64 px training step, batch {throughput['batch']}, "
                 f"{throughput['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(out: Path) -> dict:
    result = {"folder": str(out.resolve()), "steps": read_steps(out),
              "environment": read_json(out / "env.json"), "tests": read_tests(out / "tests.xml"),
              "throughput": read_json(out / "throughput.json"),
              "cats": read_cats(out / "cats_run")}
    throughput, cats = result["throughput"], result["cats"]
    gpu = bool(result["environment"] and result["environment"].get("cuda"))
    targets = {}
    if throughput and gpu:
        targets["speedup_vs_reference"] = {"value": throughput["speedup"],
                                           "target": f">= {TARGET_SPEEDUP}x",
                                           "met": throughput["speedup"] >= TARGET_SPEEDUP}
    if cats and gpu:
        minutes = cats["projected_full_run_minutes"]
        targets["full_cats_run_minutes"] = {"value": minutes,
                                            "target": f"<= {TARGET_MINUTES} (H200-class GPU)",
                                            "met": minutes <= TARGET_MINUTES}
    result["targets"] = targets
    if throughput:
        plot_throughput(throughput, out / "throughput.png")
    return result


def markdown(result: dict) -> str:
    lines = ["# GPU check", "", f"Folder: `{result['folder']}`", ""]
    env = result["environment"] or {}
    if env:
        gpu = (f" (compute capability {env['capability']}, {env['gpus']} visible), "
               f"CUDA {env['cuda']}" if env.get("cuda") else "")
        lines += [f"- device: {env['device_name']}{gpu}, torch {env['torch']}",
                  f"- precision=\"auto\" picks: {env['auto_precision']}", ""]
    lines += ["| step | exit code | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in result["steps"]]
    tests = result["tests"]
    lines += ["", "## GPU tests", ""]
    if tests is None:
        lines.append("no test report (the tests step failed before pytest wrote one)")
    else:
        lines.append(f"{tests['passed']} passed, {tests['failed']} failed, "
                     f"{tests['skipped']} skipped")
        lines += [f"- FAILED {name}" for name in tests["failed_tests"]]
        lines += [f"- skipped: {reason}" for reason in tests["skip_reasons"]]
    lines += ["", "## Throughput (benchmarks/throughput.py)", ""]
    throughput = result["throughput"]
    if throughput is None:
        lines.append("no figures (see throughput.log)")
    else:
        lines += ["| row | images/s | vs reference | vs project |", "|---|---|---|---|"]
        for label, row in throughput["rows"].items():
            lines.append(f"| {label} | {row['ips']:.1f} | {row['vs_reference']:.2f}x | "
                         f"{row['vs_project']:.2f}x |")
        lines += ["", f"project / reference: **{throughput['speedup']:.2f}x**"]
        if "cudagraph_skips" in throughput:
            lines.append(f"CUDA graph fallbacks: {throughput['cudagraph_skips']}")
        if "kernel_limit" in throughput:
            limit = throughput["kernel_limit"]
            conv, step = limit["project_conv_seconds"], limit["measured_seconds"]["project"]
            lines.append(f"the project's convolutions alone take {conv * 1e3:.1f} ms of its "
                         f"{step * 1e3:.1f} ms iteration ({conv / step:.0%}); the rest is "
                         "other kernels, launches and Python")
    lines += ["", "## Course preset on the cats (configs/dcgan_train.json)", ""]
    cats = result["cats"]
    if cats is None:
        lines.append("no run (see cats.log)")
    else:
        lines.append(f"{cats['iterations']} iterations at batch {cats['batch']:.0f} in "
                     f"{cats['precision']} on {cats['device']}: **{cats['images_per_sec']:.1f} "
                     f"images/s** (steady state; {cats['images_per_sec_overall']:.1f} overall); "
                     f"the full {FULL_RUN_ITERATIONS:,}-iteration run projected at "
                     f"**{cats['projected_full_run_minutes']:.1f} min**")
        if not cats["finished"]:
            lines.append("(stopped early by its time budget: the GPU is slower than the "
                         "step's limit allows for --iters)")
    if result["targets"]:
        lines += ["", "## Targets", ""]
        for name, t in result["targets"].items():
            lines.append(f"- {name}: {t['value']:.2f} (target {t['target']}): "
                         f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    result = summarize(out)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
