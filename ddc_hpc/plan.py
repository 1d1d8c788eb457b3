"""The plan of a run: everything decided before any training (`Plan`, validated on every rank
before any collective), the networks it builds and the checkpoints its out dir holds. The pipeline
(run.py) makes it; the phases (phases.py, levels.py), the calibration and the resume read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import budget, strategies
from .checkpoint import CheckpointSeries
from .config import Config, PhaseConfig, phases as phase_sections
from .data import Splits
from .models import build_model, input_options
from .partition import tile_shape
from .train import Clock, Task, steps_per_epoch


PLAN_FILE = "plan.json"  # a budgeted run's plan, written before training: a resume keeps it


@dataclasses.dataclass
class Plan:
    """Everything decided before any training: validated on every rank before any collective."""

    config: Config
    out: Path
    data: Splits
    tiles: list[tuple[slice, ...]]
    resume: bool
    backend: str  # resolved run.backend: gloo, nccl, mpi or mpi4py
    # data.source as identified (source_identity) and the directory the run started in, which its
    # relative paths start at: in results.json and every saved network, for evaluate --data / --run
    source: dict = dataclasses.field(default_factory=dict)
    # slot name -> manifest entry of the checkpoint it resumes from, as rank 0 chose (choose_resume)
    resume_from: dict[str, dict] = dataclasses.field(default_factory=dict)
    # slot name -> the per-rank batch of a slot resumed at another rank count (elastic_batches)
    batches: dict[str, int] = dataclasses.field(default_factory=dict)
    clock: Clock = dataclasses.field(default_factory=Clock)  # restarted when every rank has the plan
    budget: dict | None = None  # run.budget's plan (budget.plan_budget, as recorded in plan.json)
    # run.sub_share = "auto": the rule fitted to run.sub_share_trials (budget.fit_sub_passes) and the file's digest
    share_rule: dict | None = None
    # decompose.levels' tiles, finest first (partition.level_tiles; `tiles` is the finest); one level: [tiles]
    level_tiles: list[list[tuple[slice, ...]]] = dataclasses.field(default_factory=list)

    @property
    def partitions(self) -> int:
        return self.config.decompose.partitions

    @property
    def strategies(self) -> list[str]:
        return list(strategies.CHOICES[self.config.run.strategy])

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases this run trains, in order (strategies.PHASES)."""
        return strategies.phases(self.config.run.strategy)

    def section(self, name: str) -> PhaseConfig:
        """Phase `name`'s config section ("sub", "global", "random"), with the epochs it trains as configured."""
        return next(dataclasses.replace(settings, epochs=epochs)
                    for phase, settings, epochs in phase_sections(self.config) if phase == name)

    def phase(self, name: str) -> PhaseConfig:
        """What phase `name` trains: its section, with the epochs, steps per epoch and warm-up of the
        budget's plan when the run has one."""
        section = self.section(name)
        if self.budget is None or name not in self.budget["phases"]:  # no plan, or a phase this strategy skips
            return section
        planned = budget.phase_plan(self.budget, name)
        return dataclasses.replace(section, epochs=planned.epochs, steps_per_epoch=planned.steps_per_epoch,
                                   warmup_epochs=planned.warmup_epochs)

    def level_phase(self, level: int) -> PhaseConfig:
        """What the sub-networks of level `level` of decompose.levels train: phase("sub"), with that
        level's decompose.level_epochs when given."""
        epochs = self.config.decompose.level_epochs
        return dataclasses.replace(self.phase("sub"), epochs=epochs[level]) if epochs else self.phase("sub")

    def pass_steps(self, name: str, ranks: int) -> int:
        """Steps of one epoch as configured (one pass, or steps_per_epoch) on each of `ranks`
        data-parallel peers."""
        return steps_per_epoch(self.section(name), -(-len(self.data.train) // ranks))

    @property
    def tile_sample_shape(self) -> tuple[int, ...]:
        return tile_shape(self.tiles) + self.data.train.image_shape[-1:]

    @property
    def task(self) -> Task:
        return Task(self.config.model.task, self.config.model.loss_name)


def build(config: Config, partitions: int, sample_shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    """A global net (partitions=1, whole samples) or a sub-network (partitions=K, tiles), seeded.

    `sample_shape` is (*spatial, channels); the options a family takes are read from the registry.
    """
    torch.manual_seed(seed)
    return build_model(config.model.name, config.model.num_classes, partitions=partitions, width=config.model.width,
                       **input_options(config.model.name, sample_shape[:-1], sample_shape[-1]))


def checkpointed(plan: Plan) -> dict[str, dict]:
    """Slot name -> the manifest entry of its newest readable checkpoint in --out (what a run would
    resume from), for the slots that have one."""
    root = plan.out / "checkpoints"
    names = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return {n: e for n in names if (e := CheckpointSeries(root, n, plan.config.digest()).latest_entry()) is not None}
