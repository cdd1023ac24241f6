"""cellio loaders as a config's `data` section describes them (the trainer's only way to read images)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cellio

from .layout import labelled_splits, layout_of

if TYPE_CHECKING:
    from .config import Config
    from .runtime import Env

__all__ = ["make_loader", "count_train_sites"]


def make_loader(cfg: "Config", store: Any, env: "Env", experiments: list[str] | None, *, train: bool,
                **extra: Any) -> Any:
    """A cellio loader over the given labelled experiments (of the layout's labelled splits); train mode drops the ragged tail, eval keeps every site.
    `extra` goes to cellio.create_loader as it is (e.g. indices=, labels=, samples_per_epoch= with
    experiments=None and datasets=None for pseudo-labelled rows)."""
    crop = cfg.data.crop_size if train or not cfg.data.val_crop_size else cfg.data.val_crop_size
    bs = cfg.data.batch_size if train or not cfg.data.val_batch_size else cfg.data.val_batch_size
    return cellio.create_loader(
        store, bs, train=train, augment=cfg.data.augment, crop_size=crop,
        normalize=cfg.data.normalize, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed,
        backend=cfg.data.backend, device="cuda" if env.device.type == "cuda" else "cpu",
        num_workers=cfg.data.num_workers, **{**_selection(cfg, store.sites, experiments),
                                             "last_batch": "drop" if train else "partial",
                                             "batch_by": (cfg.data.batch_by or None) if train else None,
                                             **extra})


def count_train_sites(cfg: "Config", sites: Any, experiments: list[str] | None) -> int:
    """How many sites a loader of `make_loader` over `experiments` reads (its selection, without a loader): what
    one batch on every process must fit into, checked before a job trains (trainer.demo)."""
    return len(cellio.select_sites(sites, **_selection(cfg, sites, experiments)))


def _selection(cfg: "Config", sites: Any, experiments: list[str] | None) -> dict[str, Any]:
    return {"datasets": labelled_splits(layout_of(sites)), "experiments": experiments, "cell_types": cfg.data.cell_types or None,
            "controls": cfg.data.include_controls}
