"""Which plate-group rotation each experiment follows, decided so that plate style cannot fool it.

In RxRx1 every plate holds one siRNA group, so whatever is plate-specific (focus, gain, illumination, density) is
confounded with the group in training. A model can learn "this plate looks like that" and predict a GROUP, not
siRNAs: on a new plate all its wells then lean on one group's classes together, and the rotation score
(`rotation_evidence`) reads that as strong evidence for whichever rotation puts that group there. The z-score
against random groupings catches weak evidence, not such confident shortcut evidence (issue 20: a head's
z 6.9 for a wrong rotation zeroed two test experiments).

So a rotation is decided from several SOURCES, each one experiment -> RotationEvidence:

- the model's head (TTA mean), as is: it sees plate style, so it is reported but never votes (unless its
  BatchNorm statistics were recomputed per plate, AdaBN);
- the head's log-probabilities centred per plate and per group (`centred_scores`): what every well of a plate
  shares (its style, a shortcut's "this plate is group g") and any lift of a whole group in one well are
  removed; which class of a group stands out in a well stays;
- embedding centroids (per-plate centred and whitened embeddings, trainer.infer.embed), centred the same way, one per
  model.

`decide_rotations` trusts a rotation only when every trusted voting source agrees on it; when trusted voters
disagree the experiment is CONTESTED and gets no rotation (the chain then keeps only "each class at most once per
plate", which needs none). `SourceRecord`s count, on experiments whose rotation is known (validation), how often
each source was trusted and right; a decision's `reliability` comes from its agreeing voters' error rates.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError

from trainer.infer.aggregate import WellScores, log_softmax

__all__ = ["PlateGroupsLike", "CONTROL_TYPES", "RotationEvidence", "RotationSource", "RotationDecision",
           "SourceRecord", "well_table", "treatment_classes", "treatment_log_probs", "rotation_evidence",
           "centred_scores", "decide_rotations", "score_sources", "wrong_rotations"]

log = logging.getLogger(__name__)

CONTROL_TYPES = ("negative_control", "positive_control")


class PlateGroupsLike(Protocol):
    groups: tuple[tuple[int, ...], ...]

    def allowed_sirnas(self, plate: int, rotation: int) -> tuple[int, ...]: ...


def well_table(sites: pd.DataFrame) -> pd.DataFrame:
    """One row per well (id_code, sorted): experiment, plate, well_type, sirna (Int64, control labels kept)."""
    need = {"id_code", "experiment", "plate", "well_type", "sirna"}
    missing = need - set(sites.columns)
    if missing:
        raise MetadataError(f"site table lacks columns {sorted(missing)}; expected cellio's site table")
    return (sites[["id_code", "experiment", "plate", "well_type", "sirna"]]
            .drop_duplicates("id_code").sort_values("id_code").set_index("id_code"))


def treatment_classes(groups: PlateGroupsLike) -> np.ndarray:
    return np.asarray(sorted(s for g in groups.groups for s in g), dtype=np.int64)


def treatment_log_probs(wells: WellScores, treat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs renormalised over the treatment classes the model scores (controls dropped)."""
    keep = np.isin(wells.classes, treat)
    if not keep.any():
        raise ConfigError(f"the model scores none of the {len(treat)} treatment classes")
    lp = wells.log_probs()[:, keep]
    return log_softmax(lp), wells.classes[keep]


@dataclass(frozen=True)
class RotationEvidence:
    """What one experiment's wells say about its rotation r = 0..3.

    `mass[r]`: the mean probability mass its treatment wells put on the classes their plate allows under r
    (0.25 each for a model that knows nothing). `null_mean` / `null_std`: the same statistic for random groupings
    of the same classes into groups of the same sizes - what a rotation scores when it is unrelated to the truth,
    WITH this model's noise (a likelihood posterior over the 4 rotations would take that noise for evidence).
    `z`: each rotation in null standard deviations above the null mean; `separation`: best minus runner-up.
    A rotation is trusted when its z reaches ~3 (a rotation unrelated to the truth does that ~0.5% of the time)
    and it stands clear of the runner-up."""

    mass: tuple[float, ...]
    null_mean: float
    null_std: float

    @property
    def rotation(self) -> int:
        return int(np.argmax(self.mass))

    @property
    def z(self) -> tuple[float, ...]:
        return tuple((m - self.null_mean) / self.null_std if self.null_std > 0 else 0.0 for m in self.mass)

    @property
    def separation(self) -> float:
        z = sorted(self.z)
        return float(z[-1] - z[-2])

    def trusted(self, min_z: float, min_gap: float = 1.0) -> bool:
        return max(self.z) >= min_z and self.separation >= min_gap


def rotation_evidence(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *,
                      null_draws: int = 64, seed: int = 0) -> dict[str, RotationEvidence]:
    """RotationEvidence of every experiment with treatment wells among `wells` (null: `null_draws` random
    groupings, seeded, the same for every experiment)."""
    treat = treatment_classes(groups)
    meta = well_table(sites).loc[wells.id_codes]
    is_treat = ~meta["well_type"].isin(CONTROL_TYPES).to_numpy()
    lp, cls = treatment_log_probs(wells, treat)
    prob = np.exp(lp)
    col_of = {int(c): j for j, c in enumerate(cls)}
    # column -> its real group, and `null_draws` random relabellings with the same group sizes
    real = np.full(len(cls), -1)
    for g, members in enumerate(groups.groups):
        real[[col_of[s] for s in members if s in col_of]] = g
    rng = np.random.default_rng([seed, 0x5107])
    scored = np.flatnonzero(real >= 0)
    fake = np.stack([real] * null_draws)
    for k in range(null_draws):
        fake[k, scored] = real[scored][rng.permutation(len(scored))]
    onehot = (np.stack([real, *fake])[:, :, None] == np.arange(4)[None, None, :]).astype(np.float64)
    exp_arr, plate_arr = meta["experiment"].to_numpy(), meta["plate"].to_numpy()
    out: dict[str, RotationEvidence] = {}
    for exp in sorted(meta["experiment"].unique()):
        rows = np.flatnonzero((exp_arr == exp) & is_treat)
        if not len(rows):
            continue
        # per well and labelling: mass on each group (wells x labellings x 4)
        group_mass = np.einsum("wc,lcg->wlg", prob[rows], onehot)
        wanted = (plate_arr[rows][:, None] - 1 + np.arange(4)[None, :]) % 4  # well x rotation -> its group
        per_rot = np.take_along_axis(group_mass, np.broadcast_to(wanted[:, None, :], group_mass.shape),
                                     axis=2).mean(axis=0)  # labellings x rotations
        null = per_rot[1:].ravel()
        out[exp] = RotationEvidence(tuple(float(v) for v in per_rot[0]), float(null.mean()), float(null.std()))
    return out


def centred_scores(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike) -> WellScores:
    """Log-probabilities with everything a plate-style shortcut can add removed, two ways:

    1. per plate and class, minus the class's mean over the plate's treatment wells: what every well of a plate
       shares (its style; a shortcut's "this plate is group g" at its plate-wide strength) vanishes, while what
       sets a well apart - its own siRNA, present once per plate - stays (that class's mean over the plate's ~n
       wells rises by only 1/n of the well's own bump);
    2. per well and plate group, minus the group's mean over its classes: a shortcut lifts a whole GROUP, and by
       a different amount in each well (density, local focus), which (1) leaves behind. The groups are random
       sets of siRNAs, so no real phenotype lifts one group as a whole; what stays is which class of a group
       stands out - the evidence a rotation should rest on.

    Controls are centred by the same plate means but do not enter them (they are the same siRNAs on every
    plate). Classes outside the groups (controls) are left out of step 2."""
    meta = well_table(sites).loc[wells.id_codes]
    lp = wells.log_probs().astype(np.float64)
    plate = (meta["experiment"].astype(str) + "/" + meta["plate"].astype(str)).to_numpy()
    is_treat = ~meta["well_type"].isin(CONTROL_TYPES).to_numpy()
    out = lp.copy()
    for p in np.unique(plate):
        on = plate == p
        ref = on & is_treat
        if ref.sum() >= 2:  # one well: its own scores are the plate's mean; nothing to centre against
            out[on] -= lp[ref].mean(axis=0)
    for members in groups.groups:
        cols = np.flatnonzero(np.isin(wells.classes, np.asarray(members)))
        if len(cols):
            out[:, cols] -= out[:, cols].mean(axis=1, keepdims=True)
    return WellScores(wells.id_codes, out.astype(np.float32), wells.classes, "log_probs")


@dataclass(frozen=True)
class RotationSource:
    """One source of rotation evidence: its name, each experiment's evidence, and whether it votes (it cannot
    see plate style: centred scores, AdaBN)."""

    name: str
    evidence: Mapping[str, RotationEvidence]
    votes: bool


@dataclass(frozen=True)
class SourceRecord:
    """How a source did on experiments whose rotation is known: `experiments` scored, `picked_right` (its best
    rotation was the true one, trusted or not), `trusted`, `trusted_right`."""

    experiments: int = 0
    picked_right: int = 0
    trusted: int = 0
    trusted_right: int = 0

    @property
    def error_rate(self) -> float:
        """Chance that this source, when trusted, names a wrong rotation: (wrong + 1) / (trusted + 2), the mean
        of the Beta(1, 1)-prior posterior - 0.5 with no record, 0.25 after two right of two."""
        return (self.trusted - self.trusted_right + 1) / (self.trusted + 2)

    def to_dict(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "picked_right": self.picked_right, "trusted": self.trusted,
                "trusted_right": self.trusted_right, "error_rate": round(self.error_rate, 4)}


@dataclass(frozen=True)
class RotationDecision:
    """The rotation an experiment's plates are masked with (None: no mask) and why.

    status: "agreed" (every trusted voter names `rotation`), "contested" (trusted voters disagree) or "ambiguous"
    (no voter is trusted). `voters`: the trusted voting sources that name it; `support`: every trusted source that
    names it (a non-voting head among them); `dissent`: trusted sources naming another rotation. `reliability`:
    the chance the rotation is right, from the supporting sources' validation error rates (None without a record
    or without a rotation)."""

    rotation: int | None
    status: str
    voters: tuple[str, ...] = ()
    support: tuple[str, ...] = ()
    dissent: Mapping[str, int] = field(default_factory=dict)
    z: Mapping[str, float] = field(default_factory=dict)
    reliability: float | None = None
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "status": self.status, "voters": list(self.voters),
                "support": list(self.support), "dissent": dict(self.dissent), "z": {k: round(v, 2) for k, v in self.z.items()},
                "reliability": None if self.reliability is None else round(self.reliability, 4), "why": self.why}


def _reliability(support: Sequence[str], records: Mapping[str, SourceRecord] | None) -> float | None:
    """1 - the chance that every supporting source is wrong AND they are wrong alike: the product of their error
    rates, times 1/3 for each source after the first (a wrong source names one of 3 wrong rotations). A head that
    sees plate style counts here when it agrees (a shortcut and the well-specific signal then point the same way),
    never when it dissents (the decision ignores it). It assumes the sources err independently - they come from
    one model, so this is optimistic; where they visibly do not err alike (contested) there is no rotation."""
    if records is None or not support:
        return None
    wrong = float(np.prod([records.get(v, SourceRecord()).error_rate for v in support]))
    return 1.0 - wrong / 3.0 ** (len(support) - 1)


def decide_rotations(sources: Sequence[RotationSource], *, min_z: float,
                     records: Mapping[str, SourceRecord] | None = None) -> dict[str, RotationDecision]:
    """experiment -> RotationDecision from every source's evidence (see the module docstring). With `records`
    (the sources' validation record), a source that was sure of a WRONG rotation on validation is disqualified:
    it neither votes nor supports (a confident mistake where the truth was known is what a shortcut does)."""
    if not any(s.votes for s in sources):
        raise ConfigError("decide_rotations: at least one source must vote (centred scores, AdaBN, "
                          "or embedding centroids)")
    disqualified = {n for n, r in (records or {}).items() if r.trusted > r.trusted_right}
    experiments = sorted({e for s in sources for e in s.evidence})
    out: dict[str, RotationDecision] = {}
    for exp in experiments:
        have = [s for s in sources if exp in s.evidence]
        z = {s.name: float(max(s.evidence[exp].z)) for s in have}
        trusted = {s.name: s.evidence[exp].rotation for s in have if s.evidence[exp].trusted(min_z)}
        votes = {s.name: trusted[s.name] for s in have
                 if s.votes and s.name in trusted and s.name not in disqualified}
        named = sorted(set(votes.values()))
        if not votes:
            out_of = [k for k in disqualified if k in trusted]
            out[exp] = RotationDecision(None, "ambiguous", dissent={k: trusted[k] for k in out_of}, z=z, why=(
                f"no voting source is sure (z {', '.join(f'{k} {v:.1f}' for k, v in z.items())}; needs z >= "
                f"{min_z}"
                + (f"; {', '.join(out_of)} sure but disqualified: sure of a wrong rotation on validation" if out_of
                   else "")
                + "): no plate mask, each treatment class at most once per plate"))
            continue
        if len(named) > 1:
            out[exp] = RotationDecision(None, "contested", dissent=votes, z=z, why=(
                f"sources disagree ({', '.join(f'{k}: {v}' for k, v in votes.items())}): no plate mask, each "
                f"treatment class at most once per plate"))
            continue
        rot = named[0]
        dissent = {k: v for k, v in trusted.items() if v != rot}
        support = tuple(k for k, v in trusted.items() if v == rot and k not in disqualified)
        why = f"{', '.join(votes)} agree on rotation {rot}"
        if dissent:
            why += (f"; {', '.join(f'{k} says {v}' for k, v in dissent.items())} (a plate-style shortcut is "
                    f"likely)")
        out[exp] = RotationDecision(rot, "agreed", tuple(votes), support, dissent, z,
                                    _reliability(support, records), why)
    return out


def score_sources(sources: Sequence[RotationSource], known: Mapping[str, int], *, min_z: float
                  ) -> dict[str, SourceRecord]:
    """Each source's SourceRecord on the experiments of `known` (experiment -> true rotation) it has evidence of."""
    out: dict[str, SourceRecord] = {}
    for s in sources:
        exps = [e for e in s.evidence if e in known]
        right = [s.evidence[e].rotation == int(known[e]) for e in exps]
        trusted = [s.evidence[e].trusted(min_z) for e in exps]
        out[s.name] = SourceRecord(len(exps), int(sum(right)), int(sum(trusted)),
                                   int(sum(r and t for r, t in zip(right, trusted))))
    return out


def wrong_rotations(sources: Sequence[RotationSource], known: Mapping[str, int]) -> dict[str, int]:
    """Per experiment of `known`, the wrong rotation the voting sources like best (highest mean z): what a
    confident mistake would most likely have picked."""
    out: dict[str, int] = {}
    for exp, true in known.items():
        zs = [np.asarray(s.evidence[exp].z) for s in sources if s.votes and exp in s.evidence]
        if not zs:
            continue
        mean = np.mean(zs, axis=0)
        mean[int(true)] = -np.inf
        out[exp] = int(np.argmax(mean))
    return out
