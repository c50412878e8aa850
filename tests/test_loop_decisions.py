"""What the training loop does after a step (lib.training.loop.decide), one row per situation."""

import pytest

from lib.config import load_config
from lib.training.loop import Cadence, Decision, decide
from lib.training.session import HISTORY_EVERY

# 12 steps; a history line every 2, a checkpoint every 4, scores every 6
C = Cadence(total=12, log_every=2, save_every=4, eval_every=6)
DIVERGED, COLLAPSED = "non-finite loss at step 4", "diversity 0.1 below 0.3"

ROWS = [
    # situation, step, cadence, verdicts, decision
    ("ordinary step", 1, C, {}, Decision()),
    ("log step", 2, C, {}, Decision(log=True)),
    ("save step", 4, C, {}, Decision(log=True, save=True, periodic=True)),
    ("eval step", 6, C, {}, Decision(log=True, evaluate=True)),
    ("eval and save step", 12, Cadence(24, 2, 4, 6), {},
     Decision(log=True, save=True, periodic=True, evaluate=True)),
    ("last step", 12, C, {}, Decision(log=True, save=True, periodic=True, evaluate=True)),
    ("last step off every cadence", 7, Cadence(7, 2, 4), {},
     Decision(log=True, save=True, evaluate=True)),
    ("last step, no scores", 12, Cadence(12, 2, 4, scores=False), {},
     Decision(log=True, save=True, periodic=True)),
    ("scores at the end only", 6, Cadence(12, 2, 4, eval_every=0), {}, Decision(log=True)),
    ("budget stop between logs", 3, C, {"out_of_time": True},
     Decision(save=True, evaluate=True, stop=True)),
    ("budget stop, no scores", 3, Cadence(12, 2, 4, scores=False), {"out_of_time": True},
     Decision(save=True, stop=True)),
    ("budget stop at a save step", 8, C, {"out_of_time": True},
     Decision(log=True, save=True, periodic=True, evaluate=True, stop=True)),
    ("budget verdict at the last step", 12, C, {"out_of_time": True},
     Decision(log=True, save=True, periodic=True, evaluate=True)),
    ("Ctrl-C between logs: saved, not scored", 3, C, {"interrupted": True},
     Decision(save=True, stop=True)),
    ("Ctrl-C at an eval step keeps its scores", 6, C, {"interrupted": True},
     Decision(log=True, save=True, evaluate=True, stop=True)),
    ("divergence at a log step", 2, C, {"diverged": DIVERGED}, Decision(roll_back=DIVERGED)),
    ("divergence at a budget stop", 3, C, {"out_of_time": True, "diverged": DIVERGED},
     Decision(roll_back=DIVERGED)),
    ("collapse at an eval", 6, C, {"collapsed": COLLAPSED}, Decision(roll_back=COLLAPSED)),
    ("collapse at a budget stop", 6, C, {"out_of_time": True, "collapsed": COLLAPSED},
     Decision(roll_back=COLLAPSED)),
]


@pytest.mark.parametrize("situation,step,cadence,verdicts,expected", ROWS,
                         ids=[row[0] for row in ROWS])
def test_decide(situation, step, cadence, verdicts, expected):
    assert decide(step, cadence, **verdicts) == expected


def test_the_cadence_of_a_config():
    cfg = load_config("configs/dcgan_demo.json", ["trainer.epochs=3", "trainer.save_period=2",
                                                  "trainer.eval_every=50",
                                                  "trainer.eval_samples=0"])
    t = cfg.trainer
    assert Cadence.of(cfg) == Cadence(3 * t.iterations_per_epoch, HISTORY_EVERY,
                                      2 * t.iterations_per_epoch, 50, scores=False)
    assert t.log_every_step > HISTORY_EVERY  # history lines come more often than snapshots
