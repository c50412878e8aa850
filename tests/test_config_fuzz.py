"""Seeded mutations of every shipped preset: each one is refused with a ConfigError that
names the file, or it is a config that really trains.

"Really trains" is checked cheaply on what validation can know: the family builds its
networks, optimizers and schedulers on a tiny synthetic dataset of the config's size and
channels, and one training step (plus one scheduler step) gives finite losses. Refusals
at build time that depend on the data (a CVAE on unlabelled cats) are counted apart.
"""

import dataclasses
import io
import json
import math
import random
import reprlib
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from lib.config import Config, ConfigError, load_config
from lib.core.device import DeviceError, setup_engine
from lib.data import ImageData
from lib.families import FAMILIES
from lib.models import MODEL_MODULES, model_class

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# notebooks_*.json are the runner's notebook parameters, not run configs
PRESETS = {p.stem: json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))
           if not p.name.startswith("notebooks_")}
CHANNELS = {"digits": 1, "mnist": 1}  # every other dataset is read as RGB
UNLABELLED = {"cats", "folder"}
SEED, ROUNDS = 16, 2  # every (preset, kind) pair is drawn ROUNDS times

HUGE = [1e308, 1e39, 3.5e38, 1e30, 10**400, 2**63, 2**64, -(2**63) - 1, 2**62, 10**18]
ODD = [-1, 0, -0.001, 0.5, 1, 1.0000001, 2, 3, 7, 1e6, 10**6, 1e-30]
OTHER_TYPES = ["x", 3, 2.5, True, None, [1], {"a": 1}, "", [], {}]
ARG_VALUES = {int: [0, 1, 2, 3, 7, 16, 33, 64, 513, 4096, 10**5, 10**7],
              float: [0.0, 0.5, 1.0, 1.5, 10.0, 1e4, 1e5, -0.1],
              str: ["mse", "bce", "ddim", "ddpm", "linear", "cosine", "sideways"],
              list: [[], [1], [1, 1, 1, 1, 1, 1], [0, 1], [3, 5], [1, 2, 4, 8, 16], [2, 2]]}
NAN_MARK = "__nonfinite__"


def paths(node, prefix=()):
    """Every path into a nested config: sections, fields, list items."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, dict | list):
            yield from paths(value, (*prefix, key))


def get(raw, path):
    for key in path:
        raw = raw[key]
    return raw


def put(raw, path, value):
    get(raw, path[:-1])[path[-1]] = value


def pick(rng, raw, want=lambda v: True):
    found = [p for p in paths(raw) if want(get(raw, p))]
    return rng.choice(found) if found else None


def number(v):
    return isinstance(v, int | float) and not isinstance(v, bool)


def dotted(path):
    return ".".join(str(k) for k in path if not isinstance(k, int))


# ---------------------------------------------------------------------------
# Mutations: each takes (rng, raw dict) and returns (JSON text or bytes, overrides, what)


def delete(rng, raw):
    path = pick(rng, raw)
    if path is None:
        return raw, [], "nothing left to edit"
    del get(raw, path[:-1])[path[-1]]
    return raw, [], f"delete {path}"


def wrong_type(rng, raw):
    path = pick(rng, raw)
    if path is None:
        return raw, [], "nothing left to edit"
    value = rng.choice([v for v in OTHER_TYPES if type(v) is not type(get(raw, path))])
    put(raw, path, value)
    return raw, [], f"{path} = {value!r}"


def out_of_range(rng, raw):
    path = pick(rng, raw, number)
    if path is None:
        return raw, [], "nothing left to edit"
    put(raw, path, value := rng.choice(ODD))
    return raw, [], f"{path} = {value!r}"


def huge(rng, raw):
    path = pick(rng, raw, number)
    if path is None:
        return raw, [], "nothing left to edit"
    put(raw, path, value := rng.choice(HUGE))
    return raw, [], f"{path} = {reprlib.repr(value)}"


def non_finite(rng, raw):
    path = pick(rng, raw, number)
    if path is None:
        return raw, [], "nothing left to edit"
    put(raw, path, NAN_MARK)
    word = rng.choice(["NaN", "Infinity", "-Infinity"])
    return json.dumps(raw).replace(f'"{NAN_MARK}"', word), [], f"{path} = {word}"


def nudge(rng, raw):
    """A plausible edit (half, double, ten times): mostly accepted, so the build is tried."""
    path = pick(rng, raw, number)
    if path is None:
        return raw, [], "nothing left to edit"
    old = get(raw, path)
    value = old * rng.choice([0.5, 2, 10, 0.1])
    put(raw, path, value := round(value) if isinstance(old, int) else value)
    return raw, [], f"{path} = {value!r}"


def empty(rng, raw):
    path = pick(rng, raw)
    if path is None:
        return raw, [], "nothing left to edit"
    put(raw, path, value := rng.choice([[], {}, ""]))
    return raw, [], f"{path} = {value!r}"


def unknown_key(rng, raw):
    path = pick(rng, raw, lambda v: isinstance(v, dict))
    section = get(raw, path) if path and rng.random() < 0.8 else raw
    section[key := rng.choice(["epoch", "lr_decay", "colour", "Type", "args2", "beta1"])] = 1
    return raw, [], f"unknown key {key!r} under {path}"


def wrong_section(rng, raw):
    gan = "generator" in raw
    stray = rng.choice(["optimizer", "lr_scheduler", "model"] if gan else
                       ["generator_optimizer", "discriminator_lr_scheduler", "generator",
                        "discriminator"])
    raw[stray] = {"lr": 1e-3} if "optimizer" in stray else (
        {"gamma": 0.9} if "scheduler" in stray else {"type": "DDPM" if gan else "Generator"})
    return raw, [], f"section {stray!r} of the other family"


def non_utf8(rng, raw):
    text = json.dumps(raw).encode()
    quotes = [i for i, b in enumerate(text) if b == ord('"')]
    at = rng.choice(quotes) + 1  # inside a string: the JSON stays well formed
    byte = rng.choice([b"\xff", b"\xe9", b"\xc3", b"\x80"])
    return text[:at] + byte + text[at:], [], f"byte {byte!r} at {at}"


def deep(rng, raw):
    path = pick(rng, raw)
    if path is None:
        return raw, [], "nothing left to edit"
    depth = rng.choice([3, 60, 900, 100_000])
    put(raw, path, NAN_MARK)
    nested = "[" * depth + "]" * depth
    return json.dumps(raw).replace(f'"{NAN_MARK}"', nested), [], f"{path} nested {depth} deep"


def long_integer(rng, raw):
    path = pick(rng, raw, number) or ("trainer", "epochs")
    put(raw, path, NAN_MARK)
    digits = "9" * rng.choice([400, 5000])
    return json.dumps(raw).replace(f'"{NAN_MARK}"', digits), [], f"{path} = {len(digits)} digits"


def duplicate_key(rng, raw):
    key = rng.choice(list(raw))
    text = json.dumps(raw)
    return "{" + f'"{key}": {json.dumps(raw[key])}, ' + text[1:], [], f"{key!r} twice"


def override(rng, raw):
    known = [dotted(p) for p in paths(raw) if dotted(p)]
    key = rng.choice(known + ["model.args.eta", "trainer.epoks", "a.b.c", "data", "trainer"])
    value = rng.choice(["5", "-1", "0", "1e308", "1e39", '"x"', "[]", "{}", "null", "true",
                        "NaN", "Infinity", "[" * 100_000 + "]" * 100_000, "9" * 5000,
                        "9" * 400, "cuda:x", "caf\udce9", "a\u0000b", "[1, 2", "{\"a\": 1}"])
    item = rng.choice([f"{key}={value}", f"{key}={value}", key, f"={value}"])
    return raw, [item], f"--set {item[:60]!r}"


def model_type(rng, raw):
    path = pick(rng, raw, lambda v: isinstance(v, dict) and "type" in v)
    if path is None:
        return raw, [], "nothing left to edit"
    get(raw, path)["type"] = value = rng.choice([*MODEL_MODULES, "Unet", "generator", ""])
    return raw, [], f"{path}.type = {value!r}"


def model_arg(rng, raw):
    """A constructor argument set to a value of the right type: the accepted-but-wrong hunt."""
    path = pick(rng, raw, lambda v: isinstance(v, dict) and v.get("type") in MODEL_MODULES)
    if path is None:
        return raw, [], "nothing left to edit"
    spec = get(raw, path)
    args = spec.setdefault("args", {})
    hints = model_class(spec["type"]).__init__.__annotations__
    name = rng.choice(sorted(hints.keys() - {"return"}))
    kind = hints[name] if isinstance(hints[name], type) else list
    kind = {"int": int, "float": float, "str": str}.get(str(kind), kind)
    args[name] = value = rng.choice(ARG_VALUES.get(kind, ARG_VALUES[list]))
    return raw, [], f"{path}.args.{name} = {value!r}"


def junk_string(rng, raw):
    path = pick(rng, raw, lambda v: isinstance(v, str)) or ("name",)
    put(raw, path, value := rng.choice(["a\u0000b", "caf\udce9", "x" * 10_000, "../../etc",
                                        " ", "cuda:99999999999999999999", "ü"]))
    return raw, [], f"{path} = {value[:20]!r}"


def several(rng, raw):
    done = []
    for _ in range(rng.randint(2, 3)):
        kind = rng.choice(DICT_KINDS)
        raw, _, what = kind(rng, raw)
        done.append(what)
    return raw, [], " + ".join(done)


DICT_KINDS = [delete, wrong_type, out_of_range, huge, nudge, empty, unknown_key, model_type,
              model_arg, junk_string]
KINDS = [*DICT_KINDS, non_finite, wrong_section, non_utf8, deep, long_integer, duplicate_key,
         override, several]


def mutants():
    """(preset, kind, file bytes, overrides, what) for every (preset, kind) pair, ROUNDS times."""
    rng = random.Random(SEED)
    for _ in range(ROUNDS):
        for kind in KINDS:
            for name, preset in PRESETS.items():
                body, overrides, what = kind(rng, json.loads(json.dumps(preset)))
                text = json.dumps(body) if isinstance(body, dict) else body
                data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
                yield name, kind.__name__, data, overrides, what


# ---------------------------------------------------------------------------
# What an accepted config must do

# read only by the loop and the loaders, never by build or step: left out of the cache key
LOOP_ONLY = {"trainer": {"epochs", "iterations_per_epoch", "batch_size", "save_period",
                         "log_every_step", "keep_checkpoints", "eval_every", "eval_samples",
                         "features", "inception_weights", "max_minutes", "max_rollbacks",
                         "collapse_fraction",
                         "collapse_rollback", "ema_decay", "label_sensitivity_min"},
             "data": {"root", "path", "download", "limit", "verify", "seed"}}


def step_key(cfg: Config) -> str:
    d = cfg.to_dict()
    d.pop("name"), d.pop("wandb")
    for section, names in LOOP_ONLY.items():
        d[section] = {k: v for k, v in d[section].items() if k not in names}
    return json.dumps(d, sort_keys=True)


def tiny_data(cfg: Config) -> ImageData:
    d = cfg.data
    channels = d.channels or CHANNELS.get(d.dataset, 3)
    images = torch.randint(0, 256, (4, channels, d.image_size, d.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    if d.dataset in UNLABELLED:
        return ImageData(images, None, None, d.dataset)
    return ImageData(images, torch.tensor([0, 1, 2, 3]), [str(k) for k in range(10)], d.dataset)


def one_step(cfg: Config) -> str:
    """"trains", "refused at build: ..." or "WRONG: ..." for an accepted config."""
    with tqdm(total=cfg.total_steps, file=io.StringIO(), mininterval=0) as bar:
        bar.update(1)  # the progress bar that 10**400 steps crashed
    # compile costs ~20 s per model and is tested elsewhere; deterministic would leak globally
    trainer = dataclasses.replace(cfg.trainer, compile=False, deterministic=False)
    try:
        engine = setup_engine(trainer)
    except DeviceError as e:  # e.g. trainer.device=cuda on this machine: one clear line
        return f"refused at build: {e}"
    family = FAMILIES[cfg.family]
    data = tiny_data(cfg)
    try:
        parts = family.build(cfg, data, engine)
    except ConfigError as e:
        return f"refused at build: {e}"
    # one image: the preset-sized UNets' backward was most of this test's time
    x = engine.batch(data.images[:1])
    y = data.labels[:1] if data.labels is not None else None
    logs = family.step(parts, x, y, 1, engine, cfg)  # its schedulers' step included
    bad = {k: v for k, v in logs.items() if not math.isfinite(float(v))}
    return f"WRONG: non-finite {bad}" if bad else "trains"


def test_presets_are_valid_and_the_mutants_cover_all_of_them():
    assert len(PRESETS) >= 9 and {"dcgan_train", "ddpm_cats", "cvae_mnist"} <= PRESETS.keys()
    for name in PRESETS:
        load_config(CONFIGS / f"{name}.json")
    assert len(KINDS) * len(PRESETS) * ROUNDS >= 200


def test_every_mutant_is_refused_cleanly_or_trains(tmp_path, capsys):
    refused, accepted, at_build, tracebacks, wrong = 0, 0, [], [], []
    outcomes: dict[str, str] = {}
    for i, (name, kind, data, overrides, what) in enumerate(mutants()):
        path = tmp_path / f"{i:03d}_{name}.json"
        path.write_bytes(data)
        case = f"{name} [{kind}] {what}"
        try:
            cfg = load_config(path, overrides)
        except ConfigError as e:
            refused += 1
            if not str(e).startswith(f"{path}: "):
                wrong.append(f"{case}: the error does not name the file: {str(e)[:120]}")
            continue
        except Exception as e:  # noqa: BLE001 - any other exception is what this test hunts
            tracebacks.append(f"{case}: {type(e).__name__}: {str(e)[:160]}")
            continue
        accepted += 1
        if Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) != cfg:
            wrong.append(f"{case}: does not round-trip through JSON")
        key = step_key(cfg)
        if key not in outcomes:
            try:
                outcomes[key] = one_step(cfg)
            except Exception as e:  # noqa: BLE001
                outcomes[key] = f"WRONG: {type(e).__name__}: {str(e)[:160]}"
        if outcomes[key].startswith("WRONG"):
            wrong.append(f"{case}: {outcomes[key]}")
        elif outcomes[key].startswith("refused at build"):
            at_build.append(f"{case}: {outcomes[key][:160]}")
    tried = refused + accepted + len(tracebacks)
    with capsys.disabled():
        print(f"\nconfig fuzz: {tried} mutants of {len(PRESETS)} presets, {refused} refused, "
              f"{accepted} accepted ({len(at_build)} of them refused at build by the data, "
              f"{len(outcomes)} distinct builds stepped), {len(tracebacks)} tracebacks, "
              f"{len(wrong)} accepted but wrong")
        for line in at_build:
            print(f"  at build: {line}")
    assert tried >= 200
    assert not tracebacks, "\n".join(tracebacks)
    assert not wrong, "\n".join(wrong)
