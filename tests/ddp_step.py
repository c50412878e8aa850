"""One optimizer step of a small net through lib's Engine, alone or under torchrun.

`python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_step.py OUT`
writes OUT/rank<r>.pt: the weights each rank holds after one SGD step, each rank
having seen its own half of one fixed batch. test_distributed.py compares them with
`one_step` run in a single process on the whole batch.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.config import TrainerConfig
from lib.core.device import Engine, setup_engine
from lib.models.dcgan import Discriminator

BATCH = 8


def one_step(engine: Engine, batch_norm: bool = False, shards: int = 1) -> dict:
    """Weights after one SGD step on this rank's 1/world_size of the batch (1/shards of it
    in a single process: what a rank would do alone, without DDP's gradient averaging)."""
    torch.manual_seed(0)
    # an 8 px discriminator has no BatchNorm layer, a 16 px one has one
    net = Discriminator(n_channels=1, hidden_dim=8, image_size=16 if batch_norm else 8)
    net = engine.wrap(engine.prepare(net))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)  # plain SGD: the step is the gradient
    g = torch.Generator().manual_seed(1)
    size = 16 if batch_norm else 8
    x = torch.randn(BATCH, 1, size, size, generator=g).to(engine.device)
    target = torch.rand(BATCH, generator=g).to(engine.device)
    parts = max(engine.world_size, shards)
    x, target = x.chunk(parts)[engine.rank], target.chunk(parts)[engine.rank]  # (B/parts, ...)
    loss = F.binary_cross_entropy_with_logits(net(x), target)
    engine.backward_step("net", loss, optimizer)
    plain = getattr(net, "module", net)
    return {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}


if __name__ == "__main__":
    out, batch_norm = Path(sys.argv[1]), "--batch-norm" in sys.argv
    engine = setup_engine(TrainerConfig(precision="fp32", channels_last=False,
                                        sync_batchnorm=batch_norm))
    torch.save(one_step(engine, batch_norm), out / f"rank{engine.rank}.pt")
    engine.close()
