"""Run by test_distributed under torchrun: train from a config, then every rank saves its own
parameters so the test can compare the ranks bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from trainer.config import load_config
from trainer.distributed import cleanup
from trainer.loop import Trainer


def main(config: str) -> None:
    cfg = load_config(Path(config))
    trainer = Trainer(cfg, progress=False)
    try:
        result = trainer.run()
        params = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(params, str(Path(cfg.out_dir) / f"rank{trainer.dist.rank}.safetensors"),
                  metadata={"in_sync": str(result["ranks_in_sync"]), "world": str(trainer.dist.world)})
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
