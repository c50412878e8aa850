import os

import pytest

# Tests never talk to wandb; tracking.py is tested on its mode decision alone.
os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that make any demo preset train in seconds into tmp_path."""
    return [f"data.root={tmp_path / 'data'}", "trainer.epochs=1",
            "trainer.iterations_per_epoch=4", "trainer.log_every_step=2",
            "trainer.batch_size=16"]
