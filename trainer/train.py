"""Train one model as a config says: a YAML recipe and dotted overrides -> checkpoints in OUT/checkpoints.

    python -m trainer.train --config trainer/recipes/smoke_cpu.yaml data.store=PATH out=DIR optim.lr=3e-4
    torchrun --nproc_per_node 8 -m trainer.train --config trainer/recipes/densenet161_gpu.yaml data.store=PATH

Rank 0 prints the final metrics as JSON; a cellio error is one line on stderr and exit code 2. This entry is
where training meets inference: train.stage=pseudo_label gets its labeller, trainer.infer.pseudo.label_wells, here
(the training package itself never imports trainer.infer).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch.distributed as dist

from cellio.errors import CellioError

from trainer.infer.pseudo import label_wells
from trainer.training.config import load_config
from trainer.training.loop import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML recipe (trainer/recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.store=PATH")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = run(load_config(args.config, args.overrides), labeller=label_wells)
    except CellioError as exc:
        print(f"trainer.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
