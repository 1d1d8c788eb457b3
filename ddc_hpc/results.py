"""The typed record of a finished run: what run.py writes to results.json and every reader loads.

run.py builds a `Results` and report.write serialises it once (`to_dict`); report, scaling and the
benchmarks read it through `load_results`, so no reader builds key strings. The JSON keeps the keys
the README documents ("What a run writes"); files written by older versions (no `elapsed_start`,
no `metric`, no recalibration keys) load with those fields None.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import BadInput

CLASSIFICATION = "val_accuracy"  # the primary metric of classification runs (regression: val_rmse)


def _val_metrics(row: dict) -> dict:
    """The validation metrics of a history row (accuracy/top-5, or MAE/RMSE, and the loss)."""
    return {k: v for k, v in row.items() if k.startswith("val_") and k != "val_samples"}


def _rate(samples: float, seconds: float) -> float | None:
    return samples / seconds if seconds else None


def _skipped(rows) -> int:
    """fp16 steps GradScaler skipped (gradients overflowed) over some history rows."""
    return sum(row.get("skipped_steps", 0) for row in rows)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A data-parallel phase (GNet-T's `global`, GNet-R's `random`): its per-epoch history and the
    validation metrics after its last epoch (of the net as it started if it trained none)."""

    seconds: float | None = None
    epochs: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)  # val_accuracy, val_top5 / val_rmse, ...
    images_per_second: float | None = None
    # seconds since the job started (one clock for all phases; history rows carry `elapsed`)
    elapsed_start: float | None = None
    elapsed_end: float | None = None
    history: list = dataclasses.field(default_factory=list)

    def get(self, metric: str) -> float | None:
        return self.metrics.get(metric)

    @classmethod
    def from_trained(cls, trained: dict) -> Phase:
        """Summary of a phase from train.fit's record (none trained: the network as it started)."""
        history = trained["history"]
        start = trained.get("recalibrated") or trained.get("initial") or {}  # as the phase started from it
        return cls(seconds=trained["seconds"], epochs=len(history),
                   metrics=_val_metrics(history[-1] if history else start),
                   images_per_second=_rate(sum(r["train_samples"] for r in history),
                                           sum(r["train_seconds"] for r in history)),
                   elapsed_start=trained["elapsed_start"], elapsed_end=trained["elapsed_end"], history=history)

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "epochs": self.epochs, **self.metrics,
                "images_per_second": self.images_per_second, "skipped_steps": _skipped(self.history),
                "elapsed_start": self.elapsed_start, "elapsed_end": self.elapsed_end, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict) -> Phase:
        return cls(seconds=d.get("seconds"), epochs=d.get("epochs", len(d.get("history", []))),
                   metrics=_val_metrics(d), images_per_second=d.get("images_per_second"),
                   elapsed_start=d.get("elapsed_start"), elapsed_end=d.get("elapsed_end"),
                   history=d.get("history", []))


@dataclasses.dataclass(frozen=True)
class Sub:
    """The sub phase: K sub-networks trained side by side on their tiles."""

    seconds: float | None = None
    epochs: int = 0
    per_subnet: list = dataclasses.field(default_factory=list)  # each SNet's final primary metric, k order
    histories: list = dataclasses.field(default_factory=list)  # each SNet's per-epoch rows, k order
    images_per_second: float | None = None
    reach_per_rank: list | None = None
    # slowest rank's sub seconds - fastest's: what the others waited at compose
    imbalance_seconds: float | None = None
    elapsed_start: float | None = None
    elapsed_end: float | None = None

    @property
    def mean(self) -> float | None:
        return sum(self.per_subnet) / len(self.per_subnet) if self.per_subnet else None

    def to_dict(self, metric: str) -> dict:
        return {"seconds": self.seconds, "epochs": self.epochs, metric: self.mean,
                f"per_subnet_{metric}": self.per_subnet, "images_per_second": self.images_per_second,
                "skipped_steps": _skipped(row for history in self.histories for row in history),
                "reach_per_rank": self.reach_per_rank,
                "imbalance_seconds": self.imbalance_seconds, "elapsed_start": self.elapsed_start,
                "elapsed_end": self.elapsed_end, "histories": self.histories}

    @classmethod
    def from_dict(cls, d: dict, metric: str) -> Sub:
        histories = d.get("histories", [])
        per_subnet = d.get(f"per_subnet_{metric}") or [h[-1].get(metric) for h in histories if h]
        return cls(seconds=d.get("seconds"), epochs=d.get("epochs", 0), per_subnet=per_subnet,
                   histories=histories, images_per_second=d.get("images_per_second"),
                   reach_per_rank=d.get("reach_per_rank"),
                   imbalance_seconds=d.get("imbalance_seconds"), elapsed_start=d.get("elapsed_start"),
                   elapsed_end=d.get("elapsed_end"))


@dataclasses.dataclass(frozen=True)
class Compose:
    """Composition: seconds from the slowest sub-network's arrival to the composed, checked net.
    GNet-T's start is timed part by part in its own fields: the score of the composed net
    (init_eval_seconds), BN recalibration alone (recalibrate_seconds; in files written before
    recalibrated_eval_seconds existed it includes the score after it) and the score after it."""

    seconds: float | None = None
    init_metrics: dict = dataclasses.field(default_factory=dict)  # GNet-T as composed, not trained
    recalibrated_metrics: dict = dataclasses.field(default_factory=dict)  # after BN recalibration (or none)
    init_eval_seconds: float | None = None
    recalibrate_seconds: float | None = None
    recalibrated_eval_seconds: float | None = None
    max_abs_error: float | None = None  # Theorem 2.1: max |F(x) - sum_k F_k(x)|
    max_rel_error: float | None = None
    bytes_gathered: int | None = None

    def init(self, metric: str) -> float | None:
        return self.init_metrics.get(metric)

    def recalibrated(self, metric: str) -> float | None:
        return self.recalibrated_metrics.get(metric)

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "epochs": 0, **self.init_metrics,
                **{f"init_{k}": v for k, v in self.init_metrics.items()},
                **{f"recalibrated_{k}": v for k, v in self.recalibrated_metrics.items()},
                "init_eval_seconds": self.init_eval_seconds, "recalibrate_seconds": self.recalibrate_seconds,
                "recalibrated_eval_seconds": self.recalibrated_eval_seconds,
                "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "bytes_gathered": self.bytes_gathered}

    @classmethod
    def from_dict(cls, d: dict) -> Compose:
        def prefixed(prefix):
            return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix + "val_")}

        return cls(seconds=d.get("seconds"), init_metrics=prefixed("init_") or _val_metrics(d),
                   recalibrated_metrics=prefixed("recalibrated_"), init_eval_seconds=d.get("init_eval_seconds"),
                   recalibrate_seconds=d.get("recalibrate_seconds"),
                   recalibrated_eval_seconds=d.get("recalibrated_eval_seconds"), max_abs_error=d.get("max_abs_error"),
                   max_rel_error=d.get("max_rel_error"), bytes_gathered=d.get("bytes_gathered"))


# top-level keys besides the phases, in the order results.json has them
HEADER = ("strategy", "world_size", "rank_counts", "partitions", "model", "dataset", "source", "threads", "device",
          "precision", "resumed", "slurm_restarts", "metric")


@dataclasses.dataclass
class Results:
    """results.json: what ran, and one section per phase that ran (None: not run)."""

    model: str
    partitions: int
    strategy: str | None = None
    world_size: int | None = None
    # every rank count the run had, in order, each with the checkpoints it continued from
    # (resume.record_rank_count); None in files written before it was recorded
    rank_counts: list[dict] | None = None
    dataset: str | None = None
    # the data as identified: kind, resolved path, options, content digest, and the directory the run
    # started in (data.sources.source_identity); None in files written before it was recorded
    source: dict | None = None
    threads: int | None = None
    device: str | None = None
    precision: str | None = None
    resumed: bool = False
    slurm_restarts: int | None = None
    metric: str = CLASSIFICATION
    sub: Sub | None = None
    compose: Compose | None = None
    global_: Phase | None = None
    random: Phase | None = None
    backend: str | None = None
    # run.budget's plan (calibration, steps per phase, sub share), each strategy's elapsed_seconds
    budget: dict | None = None
    # data.split_seed and each split's size and sample digest (Splits.record); None before it was recorded
    splits: dict | None = None
    # decompose.levels: one record per level, finest first (multilevel_ddc); None for one level
    levels: list | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # keys this version does not know (kept)

    @property
    def has_ddc(self) -> bool:
        return self.sub is not None and self.compose is not None and self.global_ is not None

    def to_dict(self) -> dict:
        d = {key: getattr(self, key) for key in HEADER}
        for key, section in (("sub", self.sub), ("compose", self.compose), ("global", self.global_),
                             ("random", self.random)):
            if section is not None:
                d[key] = section.to_dict(self.metric) if key == "sub" else section.to_dict()
        return d | {"backend": self.backend} | ({"budget": self.budget} if self.budget else {}) \
            | ({"splits": self.splits} if self.splits else {}) | ({"levels": self.levels} if self.levels else {}) \
            | self.extra

    @classmethod
    def from_dict(cls, d: dict) -> Results:
        metric = d.get("metric") or CLASSIFICATION
        known = {*HEADER, "sub", "compose", "global", "random", "backend", "budget", "splits", "levels"}
        return cls(**{key: d[key] for key in HEADER if key in d} | {"metric": metric}, backend=d.get("backend"),
                   budget=d.get("budget"), splits=d.get("splits"), levels=d.get("levels"),
                   sub=Sub.from_dict(d["sub"], metric) if d.get("sub") else None,
                   compose=Compose.from_dict(d["compose"]) if d.get("compose") else None,
                   global_=Phase.from_dict(d["global"]) if d.get("global") else None,
                   random=Phase.from_dict(d["random"]) if d.get("random") else None,
                   extra={k: v for k, v in d.items() if k not in known})


def ddc_sections(compose_info: dict, trained: dict, metric: str, sub_epochs: int) -> tuple[Sub, Compose, Phase]:
    """The sub, compose and global sections from compose_phase's record (rank 0 holds all sub
    histories and every rank's sub-phase reach) and GNet-T's training."""
    histories = compose_info["histories"]
    histories = [histories[k] for k in range(len(histories))]
    seconds = compose_info["seconds_sub"]
    sub = Sub(seconds=seconds, epochs=sub_epochs, per_subnet=[h[-1][metric] for h in histories], histories=histories,
              images_per_second=_rate(sum(r["train_samples"] for h in histories for r in h), seconds),
              reach_per_rank=compose_info["reach_per_rank"], imbalance_seconds=compose_info["imbalance_seconds"],
              elapsed_start=compose_info["sub_elapsed"][0], elapsed_end=compose_info["sub_elapsed"][1])
    compose = Compose(seconds=compose_info["seconds"], init_metrics=_val_metrics(trained["initial"] or {}),
                      recalibrated_metrics=_val_metrics(trained["recalibrated"] or {}),
                      init_eval_seconds=trained["init_eval_seconds"],
                      recalibrate_seconds=trained["recalibrate_seconds"],
                      recalibrated_eval_seconds=trained["recalibrated_eval_seconds"],
                      max_abs_error=compose_info["max_abs_error"], max_rel_error=compose_info["max_rel_error"],
                      bytes_gathered=compose_info["bytes_gathered"])
    return sub, compose, Phase.from_trained(trained)


def load_results(path: str | Path) -> Results:
    """The Results of a run directory (or of its results.json); BadInput if missing or not a run's."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        d = json.loads(file.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path} has no results.json: the run has not finished (results.json is written last), "
                       "or this is not a ddc_hpc run directory") from None
    except (OSError, ValueError) as err:
        raise BadInput(f"{file} cannot be read ({err})") from None
    if not isinstance(d, dict) or not {"model", "partitions"} <= set(d):
        raise BadInput(f"{file} is not the results of a ddc_hpc run")
    try:
        return Results.from_dict(d)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise BadInput(f"{file} is not the results of a ddc_hpc run ({err!r})") from None
