"""cellio loaders as a config's `data` section describes them (the trainer's only way to read images)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cellio

from .layout import labelled_splits, layout_of

if TYPE_CHECKING:
    from .config import Config
    from .labels import ClassMap
    from .runtime import Env

__all__ = ["make_loader", "count_train_sites"]


def make_loader(cfg: "Config", store: Any, env: "Env", experiments: list[str] | None, *, train: bool,
                class_map: "ClassMap", **extra: Any) -> Any:
    """A cellio loader over the given labelled experiments (of the layout's labelled splits); train mode drops the
    ragged tail, eval keeps every site. `extra` goes to cellio.create_loader as it is (e.g. indices=, labels=,
    samples_per_epoch= with experiments=None and datasets=None for pseudo-labelled rows). Where the layout names its
    labels (genes, compounds), the loader cannot read class ids from the store: each selected site's id in
    `class_map`'s vocabulary goes to it as `labels=` (labels in `extra` win over them)."""
    crop = cfg.data.crop_size if train or not cfg.data.val_crop_size else cfg.data.val_crop_size
    bs = cfg.data.batch_size if train or not cfg.data.val_batch_size else cfg.data.val_batch_size
    options = {**_selection(cfg, store.sites, experiments), "last_batch": "drop" if train else "partial",
               "batch_by": (cfg.data.batch_by or None) if train else None, **extra}
    if class_map.names is not None:
        rows = cellio.select_sites(store.sites, **{k: options.get(k) for k in _SELECT_KEYS})
        options["labels"] = {**class_map.loader_labels(store.sites, rows), **(extra.get("labels") or {})}
    return cellio.create_loader(
        store, bs, train=train, augment=cfg.data.augment, crop_size=crop,
        normalize=cfg.data.normalize, rank=env.rank, world_size=env.world_size, seed=cfg.train.seed,
        backend=cfg.data.backend, device="cuda" if env.device.type == "cuda" else "cpu",
        num_workers=cfg.data.num_workers, **options)


def count_train_sites(cfg: "Config", sites: Any, experiments: list[str] | None) -> int:
    """How many sites a loader of `make_loader` over `experiments` reads (its selection, without a loader): what
    one batch on every process must fit into, checked before a job trains (trainer.demo)."""
    return len(cellio.select_sites(sites, **_selection(cfg, sites, experiments)))


# cellio.select_sites's filters, as make_loader passes them to cellio.create_loader
_SELECT_KEYS = ("datasets", "cell_types", "experiments", "controls", "indices")


def _selection(cfg: "Config", sites: Any, experiments: list[str] | None) -> dict[str, Any]:
    return {"datasets": labelled_splits(layout_of(sites)), "experiments": experiments, "cell_types": cfg.data.cell_types or None,
            "controls": cfg.data.include_controls}
