"""Run configuration: TOML file + `--set key=value` overrides -> frozen, validated dataclasses.

Validation is pure and deterministic, so every rank reaches the same verdict on the same input
before any collective; a wrong value raises BadInput (exit 2) with a message saying how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .budget import AUTO, parse_budget
from .errors import BadInput
from .kinds import TASKS, parse_source
from .strategies import CHOICES, phases as strategy_phases

BACKENDS = ("auto", "gloo", "nccl", "mpi", "mpi4py")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("auto", "cross_entropy", "mse", "l1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
RANDOM_INIT_SEED_OFFSET = 7919  # GNet-R is built right after seeding with run.seed + this
# [run] keys that say how a run executes, not what it learns: a resume may change them
OPERATIONAL = ("backend", "device", "threads", "checkpoint_every", "collective_timeout", "progress_seconds")
SCHEDULES = ("step", "cosine", "linear")
# torch.compile backends: "" trains eagerly; "inductor" compiles (the sub step ran 1.39x faster on CPU,
# benchmarks/RESULTS.md); "eager" / "aot_eager" trace without code generation (checks of the plumbing).
COMPILE_BACKENDS = ("", "inductor", "eager", "aot_eager")


@dataclass(frozen=True)
class Check:
    """The constraint of one config key, declared beside the key with `key()`; `validate` walks every
    key of every section and applies its Check, so a key cannot skip validation (a field declared
    without one is refused when the class is defined). Bounds hold for numbers and for each element
    of a list; floats must also be finite. Relations between keys are `@relation` functions below.
    """

    at_least: float | None = None  # value >= at_least
    above: float | None = None  # value > above
    at_most: float | None = None  # value <= at_most
    below: float | None = None  # value < below
    choices: tuple[str, ...] | typing.Callable[[], typing.Sequence[str]] = ()  # a callable: read when checked
    text: typing.Callable[[str], object] | None = None  # reads a string value (`float | str` keys), raises BadInput
    unit: str = ""  # e.g. " seconds", after the range in messages
    note: str = ""  # what special values mean, e.g. "0 = all samples"

    def range_text(self) -> str:
        low = ("[", self.at_least) if self.at_least is not None else ("(", self.above)
        high = ("]", self.at_most) if self.at_most is not None else (")", self.below)
        if low[1] is None:
            return "" if high[1] is None else f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
        if high[1] is None:
            return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"

    def problem(self, where: str, value) -> str | None:
        """What is wrong with `value` (already of the key's type), or None."""
        if isinstance(value, tuple):
            bad = next((i for i, v in enumerate(value) if self.problem(where, v)), None)
            return None if bad is None else (f"{self.problem(where, value[bad])} (element {bad} of {list(value)}; "
                                             "every element must be)")
        if isinstance(value, str):
            choices = self.choices() if callable(self.choices) else self.choices
            if choices and value not in choices:
                return (f"{where} = {value!r} is not one of {', '.join(c or repr(c) for c in choices)}"
                        f"{_did_you_mean(value, choices)}")
            if self.text is not None:
                self.text(value)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        finite = not isinstance(value, float) or math.isfinite(value)
        if finite and ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                       and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below)):
            return None
        wanted = " ".join(filter(None, ["" if finite else "a finite number", self.range_text()]))
        return f"{where} must be {wanted}{self.unit}{f' ({self.note})' if self.note else ''}, got {value}"


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


_CHECK = "ddc_check"


def key(default, **constraint):
    """A config key: its default and its Check, one line beside the field."""
    return field(default=default, metadata={_CHECK: Check(**constraint)})


def _checked(cls):
    """A frozen config section whose every key declares its Check (a key added without one is
    refused at import, not left unchecked)."""
    cls = dataclass(frozen=True)(cls)
    missing = [f.name for f in dataclasses.fields(cls) if _CHECK not in f.metadata]
    if missing:
        raise TypeError(f"{cls.__name__}: config keys {missing} declare no Check; define them with key(...)")
    return cls


def _model_names() -> list[str]:
    from .models import model_names  # the registry (imports torch): read only when a name is checked

    return model_names()


def _budget_text(text: str) -> None:
    if text:  # "": no budget
        try:
            parse_budget(text)
        except ValueError as err:
            raise BadInput(f"run.budget: {err}") from None


def _share_text(text: str) -> None:
    if text != AUTO:
        raise BadInput(f"run.sub_share must be a share in (0, 1) or \"{AUTO}\" (the planner's rule), got {text!r}")


SEED_MAX = 2**32 - 1  # seeds become seed * 1000 + k and torch / numpy seeds: keep them far from 2**63
TIMEOUT_MAX = 30 * 24 * 3600.0  # seconds; longer than any allocation, well inside timedelta and int64 ms
COUNT_MAX = 4096  # partitions and threads: default_grid factors K, torch takes the thread count as an int32


@_checked
class ModelConfig:
    name: str = key("cifar_resnet20", choices=_model_names)
    width: int = key(32, at_least=1)
    num_classes: int = key(10, at_least=1)  # for regression: the number of targets
    task: str = key("classification", choices=TASKS)
    loss: str = key("auto", choices=LOSSES)  # cross_entropy for classification, mse otherwise

    @property
    def loss_name(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if self.task == "classification" else "mse"


@_checked
class DecomposeConfig:
    partitions: int = key(4, at_least=1, at_most=COUNT_MAX)
    grid: tuple[int, ...] = key((), at_least=1)  # empty: the most nearly square grid of `partitions` tiles
    overlap: int = key(0, at_least=0)
    crop: int = key(0, at_least=0)
    # sub-network counts of multilevel composition, finest first (e.g. [16, 4]: 16 compose into 4,
    # those into the global net); empty: one level, [partitions]
    levels: tuple[int, ...] = key((), at_least=1)
    # epoch runs: the epochs of each level, finest first; empty: sub.epochs at every level
    level_epochs: tuple[int, ...] = key((), at_least=1)

    @property
    def level_counts(self) -> tuple[int, ...]:
        return self.levels or (self.partitions,)


@_checked
class DataConfig:
    source: str = key("synthetic", text=parse_source)
    val_fraction: float = key(0.2, above=0.0, below=1.0)
    limit: int = key(0, at_least=0, note="0 = all samples")  # 0: every training sample
    # 0: the whole validation split; N: a stratified N of it (quick tuning trials)
    val_limit: int = key(0, at_least=0, note="0 = the whole split")
    in_memory: bool = key(True)
    augment: bool = key(True)
    max_shift: int = key(2, at_least=0)  # pixels; the paper's random shift, kept small for 16x16 tiles
    # draws every split (validation, tuning, limit): fixed whatever run.seed, so all seeds and
    # strategies are scored on the same images
    split_seed: int = key(0, at_least=0, at_most=SEED_MAX)
    # N: a stratified tuning split of N images carved from the training split (never trained on)
    tuning_size: int = key(0, at_least=0, note="0 = no tuning split")
    # true: a tuning trial, scored on the tuning split; the validation split is not read
    tune: bool = key(False)


@_checked
class PhaseConfig:
    epochs: int = key(3, at_least=0)
    batch_size: int = key(64, at_least=1)
    lr: float = key(1e-3, above=0.0)
    optimizer: str = key("adam", choices=OPTIMIZERS)
    momentum: float = key(0.9, at_least=0.0, below=1.0)  # SGD's; torch refuses < 0, >= 1 never forgets
    weight_decay: float = key(0.0, at_least=0.0)
    milestones: tuple[int, ...] = key((), at_least=1)
    gamma: float = key(0.1, above=0.0, at_most=1.0)
    # one factor per milestone (the paper's /10 and /2); empty: gamma at each
    gammas: tuple[float, ...] = key((), above=0.0, at_most=1.0)
    # 0: off; the paper divides the lr by sqrt(10) after 5 flat epochs
    plateau_patience: int = key(0, at_least=0, note="0 = off")
    plateau_factor: float = key(1 / math.sqrt(10), above=0.0, below=1.0)  # torch's ReduceLROnPlateau needs < 1
    # step: milestones; cosine / linear: decay to zero over the phase, per step
    schedule: str = key("step", choices=SCHEDULES)
    # linear warm-up from lr / warm-up steps to lr; fractions of an epoch allowed; finite here, its range
    # (0 to the phase's epochs) is the relation _warmup_within_phase
    warmup_epochs: float = key(0.0)
    # 0: an epoch is one pass; N: N steps, the data continuing across epochs
    steps_per_epoch: int = key(0, at_least=0, note="0 = one pass over the data")
    # 0: off; N: BatchNorm statistics from N batches before each evaluation
    bn_recalibrate_batches: int = key(0, at_least=0, note="0 = off")
    # [global] only: also score the composed net with the tiles' BN statistics, before recalibrating
    evaluate_before_recalibration: bool = key(True)
    # "": eager; a torch.compile backend (COMPILE_BACKENDS) compiles the network
    compile: str = key("", choices=COMPILE_BACKENDS)
    # epochs between validation scores; 0: only after the phase's last epoch (GNet-T: not as composed either)
    eval_every: int = key(1, at_least=0, note="0 = only after the phase's last epoch")
    # [global] only, levers at composition: carry the sub-networks' Adam moments into GNet-T's
    # optimizer (composed block-diagonally like the weights, step counts kept); shrink and perturb
    # the composed weights (Ash & Adams 2020): w <- shrink * w + perturb * w_init, w_init a fresh init.
    carry_optimizer: bool = key(False)
    shrink: float = key(1.0, above=0.0, at_most=1.0)
    perturb: float = key(0.0, at_least=0.0)

    @property
    def milestone_factors(self) -> tuple[float, ...]:
        return self.gammas or (self.gamma,) * len(self.milestones)


@_checked
class RunConfig:
    strategy: str = key("both", choices=tuple(CHOICES))
    seed: int = key(0, at_least=0, at_most=SEED_MAX)
    backend: str = key("auto", choices=BACKENDS)
    device: str = key("auto", choices=DEVICES)
    threads: int = key(0, at_least=0, at_most=COUNT_MAX, note="0 = automatic")  # 0: cores of this node / ranks on it
    deterministic: bool = key(False)
    # Autocast dtype of forward and loss; parameters, optimizer state and composition stay fp32.
    precision: str = key("fp32", choices=PRECISIONS)
    checkpoint_every: int = key(1, at_least=0, note="0 = only on signals and at phase ends")  # epochs
    # seconds a collective may wait before the job is ended
    collective_timeout: float = key(300.0, above=0.0, at_most=TIMEOUT_MAX, unit=" seconds")
    # at most one progress line per this many seconds within an epoch; 0: none
    progress_seconds: float = key(30.0, at_least=0.0, note="0 = no progress lines within an epoch")
    # A wall-time budget for each strategy: "" none (epochs decide), seconds (600), "20min", "1h", or
    # "slurm" (the job's remaining time less a margin, shared by the strategies). The planner
    # (budget.py) then sets every phase's steps; a resume keeps the recorded plan.
    budget: float | str = key("", above=0.0, text=_budget_text, unit=" seconds")
    # with a budget: the sub phase's share of DDC's training time, or "auto": the planner's rule
    # (budget.auto_sub_share) fitted to the DDC share trials in run.sub_share_trials
    sub_share: float | str = key(0.3, above=0.0, below=1.0, text=_share_text)
    sub_share_trials: str = key("")  # a trials file (python -m ddc_hpc.frontier tune), relative to where the run starts


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sub: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=6, lr=2e-3))
    # GNet-T and GNet-R evaluate with BatchNorm statistics of their current weights (2 batches), the
    # same care for both: with few steps an epoch the running averages lag far behind the weights
    # (GNet-R's first quickstart epochs scored exactly 10 %; benchmarks/RESULTS.md).
    global_: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=2, lr=1e-3, bn_recalibrate_batches=2))
    # The GNet-R baseline; epochs 0 means sub.epochs + global.epochs (the paper's protocol).
    random: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=0, lr=2e-3, bn_recalibrate_batches=2))
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def random_epochs(self) -> int:
        return self.random.epochs or self.sub.epochs + self.global_.epochs

    def to_dict(self) -> dict:
        """Every key by section; decompose.levels only with more than one level and level_epochs only
        when given, so a one-level job ([K] or none) has the file, digest and record it had before
        levels existed (its checkpoints resume)."""
        values = {_toml_name(f.name): dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if len(self.decompose.level_counts) == 1:
            del values["decompose"]["levels"]
        if not self.decompose.level_epochs:
            del values["decompose"]["level_epochs"]
        return values

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def digest(self) -> str:
        """Hash of what decides the training (all but run's OPERATIONAL keys): checkpoints of another
        digest are refused on resume, so raising run.collective_timeout or changing the device keeps them."""
        training = self.to_dict()
        for key in OPERATIONAL:
            del training["run"][key]
        return _hash(training)

    def full_digest(self) -> str:
        """Hash of the whole resolved configuration: the ranks of one run must agree on it."""
        return _hash(self.to_dict())


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _toml_name(attr: str) -> str:
    return attr.rstrip("_")  # `global` is a Python keyword


SECTIONS = {_toml_name(f.name): f for f in dataclasses.fields(Config)}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _job_hint(path: Path) -> str:
    """Where job files are, and the closest names to a mistyped one."""
    jobs = sorted(Path("jobs").glob("*.toml"))
    if not jobs:
        return ""
    close = difflib.get_close_matches(path.name, [j.name for j in jobs], n=2)
    if close:
        return " (did you mean " + " or ".join(f"jobs/{c}" for c in close) + "?)"
    example = next((j for j in jobs if j.name == "quickstart.toml"), jobs[0])
    return f" such as jobs/{example.name} ({len(jobs)} jobs in jobs/)"


_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _coerce(where: str, value, annotation):
    """Check a TOML value against a dataclass field type; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise BadInput(f"{where} must be a list such as [1, 2], got {value!r}; in a job file write "
                           f"{where.split('.')[-1]} = [1, 2], on the command line --set {where}=[1,2]")
        return tuple(_coerce(f"{where}[{i}]", v, typing.get_args(annotation)[0]) for i, v in enumerate(value))
    kinds = typing.get_args(annotation) if origin is types.UnionType else (annotation,)  # e.g. float | str
    for kind in kinds:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif isinstance(value, kind):
            return value
    example = {int: "5", float: "0.001", bool: "true", str: '"text"'}.get(kinds[0], "...")
    key = where.split("[")[0]
    if key != where:  # an element of a list
        example = f"[{example}, {example}]"
    raise BadInput(f"{where} must be {' or '.join(_KIND_NAMES.get(k, k.__name__) for k in kinds)}, got "
                   f"{type(value).__name__} {value!r}; values use TOML syntax: in a job file "
                   f"{key.split('.')[-1]} = {example} under [{key.split('.')[0]}], on the command line "
                   f"--set {key}={example.strip(chr(34)).replace(' ', '')}")


def _build(raw: dict) -> Config:
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise BadInput(f"unknown config section [{name}]{_did_you_mean(name, SECTIONS)}; the sections are "
                           f"{', '.join(f'[{s}]' for s in SECTIONS)} (see the Configuration table in README.md)")
        if not isinstance(values, dict):
            raise BadInput(f"[{name}] must be a table of keys, got {values!r}; write its keys under a [{name}] "
                           f"header, or set one with --set {name}.KEY=VALUE")
        section = SECTIONS[name]
        default = section.default_factory()
        hints = typing.get_type_hints(type(default))
        for key in sorted(set(values) - set(hints)):
            raise BadInput(f"unknown key {name}.{key}{_did_you_mean(f'{name}.{key}', (f'{name}.{k}' for k in hints))}; "
                           f"[{name}] takes {', '.join(hints)} (see the Configuration table in README.md)")
        typed = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
        sections[section.name] = dataclasses.replace(default, **typed)
    return Config(**sections)


def parse_override(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (['a', 'b'], value); value in TOML syntax, bare words taken as strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"--set expects key=value (e.g. sub.epochs=5), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """The resolved, validated configuration of a run."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(f"config file {path} does not exist (relative paths start at {Path.cwd()}). Give the "
                           f"path of a job TOML file{_job_hint(path)}, or leave out --config to "
                           "run the built-in quickstart") from None
        except OSError as err:
            raise BadInput(f"config file {path} cannot be read: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise BadInput(f"config file {path} is not valid TOML: {err}") from None
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) != 2:
            raise BadInput(f"--set key must be section.key (e.g. sub.epochs), got {'.'.join(keys)!r}")
        raw.setdefault(keys[0], {})
        if not isinstance(raw[keys[0]], dict):
            raise BadInput(f"[{keys[0]}] must be a table of keys")
        raw[keys[0]][keys[1]] = value
    config = _build(raw)
    validate(config)
    return config


def recorded_split_seed(data: dict, run: dict) -> int:
    """The split seed of a run as recorded ([data] and [run] of its config.toml or saved network):
    runs from before data.split_seed drew their splits with run.seed."""
    return data.get("split_seed", run.get("seed", 0))


def load_run_config(run_dir: str | Path) -> Config:
    """A run's resolved configuration, from its config.toml, with the split seed it really used."""
    config = load_config(Path(run_dir) / "config.toml")
    raw = tomllib.loads((Path(run_dir) / "config.toml").read_text())
    seed = recorded_split_seed(raw.get("data", {}), raw.get("run", {}))
    return dataclasses.replace(config, data=dataclasses.replace(config.data, split_seed=seed))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BadInput(message)


RELATIONS: list[typing.Callable[[Config], None]] = []


def relation(check: typing.Callable[[Config], None]) -> typing.Callable[[Config], None]:
    """Register a constraint between keys (checked by validate after every key's own Check)."""
    RELATIONS.append(check)
    return check


def phases(config: Config) -> list[tuple[str, PhaseConfig, int]]:
    """(section name, settings, epochs it trains) of the three training phases."""
    return [("sub", config.sub, config.sub.epochs), ("global", config.global_, config.global_.epochs),
            ("random", config.random, config.random_epochs)]


@relation
def _loss_fits_task(config: Config) -> None:
    m = config.model
    _require((m.loss_name == "cross_entropy") == (m.task == "classification"),
             f"model.loss = {m.loss!r} does not fit model.task = {m.task!r}: classification uses "
             "cross_entropy, regression and autoencoder use mse or l1")


@relation
def _one_tile_per_subnetwork(config: Config) -> None:
    d = config.decompose
    _require(not d.grid or math.prod(d.grid) == d.partitions,
             f"decompose.grid = {list(d.grid)} has {math.prod(d.grid)} tiles but decompose.partitions = "
             f"{d.partitions}; the grid must have exactly one tile per sub-network")


@relation
def _levels_nest(config: Config) -> None:
    """decompose.levels: finest first, decreasing, dividing; level_epochs: one count per level, epoch runs only."""
    d = config.decompose
    finest = d.level_counts[0]  # levels[0] when given
    _require(finest == d.partitions,
             f"decompose.levels = {list(d.levels)} starts at {finest} sub-networks but decompose.partitions = "
             f"{d.partitions}: the first level is the finest, the sub-networks the sub phase trains; set "
             f"decompose.partitions = {finest}")
    for fine, coarse in zip(d.levels, d.levels[1:]):
        _require(coarse >= 2 and fine > coarse and fine % coarse == 0,
                 f"decompose.levels = {list(d.levels)}: each level must have fewer sub-networks than the one before, "
                 f"at least 2, and divide it ({fine} sub-networks compose in equal groups into {coarse}); e.g. [16, 4]")
    if not d.level_epochs:
        return
    _require(len(d.level_counts) > 1, f"decompose.level_epochs = {list(d.level_epochs)} gives the epochs of each level "
             "of decompose.levels, but the run has one level: use sub.epochs, or set decompose.levels (e.g. [16, 4])")
    _require(len(d.level_epochs) == len(d.level_counts), f"decompose.level_epochs = {list(d.level_epochs)} has "
             f"{len(d.level_epochs)} epoch count(s) for the {len(d.level_counts)} level(s) of decompose.levels = "
             f"{list(d.level_counts)}: give one per level, finest first, or none (sub.epochs at every level)")
    _require(not config.run.budget, "decompose.level_epochs sets an epoch run's epochs per level, but run.budget plans "
             "every level's steps itself: remove decompose.level_epochs or run.budget")


@relation
def _milestones_increase(config: Config) -> None:
    for name, p, _ in phases(config):
        _require(list(p.milestones) == sorted(set(p.milestones)),
                 f"{name}.milestones must be increasing positive epochs, got {list(p.milestones)}")


@relation
def _one_gamma_per_milestone(config: Config) -> None:
    for name, p, _ in phases(config):
        _require(not p.gammas or len(p.gammas) == len(p.milestones),
                 f"{name}.gammas has {len(p.gammas)} factors for {len(p.milestones)} milestones: give one factor "
                 "per milestone (e.g. milestones = [20, 40, 60], gammas = [0.1, 0.1, 0.5]), or none to use gamma")


@relation
def _milestones_need_a_step_schedule(config: Config) -> None:
    for name, p, _ in phases(config):
        _require(p.schedule == "step" or not p.milestones,
                 f"{name}.milestones are for schedule = \"step\"; a {p.schedule} schedule decays to zero over "
                 f"the whole phase: remove {name}.milestones or set {name}.schedule = \"step\"")


@relation
def _warmup_within_phase(config: Config) -> None:
    for name, p, epochs in phases(config):
        if config.run.budget:  # the plan sets the epochs; the warm-up counts passes, at most half the phase
            _require(p.warmup_epochs >= 0, f"{name}.warmup_epochs must be >= 0, got {p.warmup_epochs}")
        else:
            _require(0 <= p.warmup_epochs <= epochs,
                     f"{name}.warmup_epochs must be between 0 and the phase's {epochs} epochs, got {p.warmup_epochs}")


@relation
def _recalibration_choice_is_global(config: Config) -> None:
    for name, p, _ in phases(config):
        _require(name == "global" or p.evaluate_before_recalibration,
                 f"{name}.evaluate_before_recalibration is a [global] setting (GNet-T as composed): remove it "
                 f"from [{name}]")


@relation
def _composition_levers_are_global(config: Config) -> None:
    default = PhaseConfig()
    for name, p, _ in phases(config):
        for key in ("carry_optimizer", "shrink", "perturb"):
            _require(name == "global" or getattr(p, key) == getattr(default, key),
                     f"{name}.{key} is a [global] setting (GNet-T's start from the composed net): remove it "
                     f"from [{name}]")


@relation
def _carried_moments_are_adams(config: Config) -> None:
    _require(not config.global_.carry_optimizer or config.global_.optimizer == config.sub.optimizer == "adam",
             "global.carry_optimizer composes the sub-networks' Adam moments: it needs sub.optimizer and "
             "global.optimizer = \"adam\"")


@relation
def _tuning_needs_its_split(config: Config) -> None:
    _require(not config.data.tune or config.data.tuning_size,
             "data.tune = true scores a tuning trial on the tuning split, but data.tuning_size = 0 carves none: "
             "give data.tuning_size (e.g. 2500 of CIFAR-10's 45,000 training images)")


@relation
def _auto_share_has_its_trials(config: Config) -> None:
    if config.run.sub_share != AUTO:
        return
    _require(config.run.budget, "run.sub_share = \"auto\" chooses the sub phase's share of a wall-time budget: set "
             "run.budget too, or give the share itself (e.g. run.sub_share = 0.5)")
    _require(config.run.sub_share_trials, "run.sub_share = \"auto\" fits its rule to DDC share trials: set "
             "run.sub_share_trials to the trials file (python -m ddc_hpc.frontier tune writes one), or give the "
             "share itself (e.g. run.sub_share = 0.5)")


@relation
def _sub_networks_train(config: Config) -> None:
    _require("sub" not in strategy_phases(config.run.strategy) or config.run.budget or config.sub.epochs >= 1,
             "sub.epochs must be >= 1 when the strategy trains sub-networks")


@relation
def _budgets_anneal(config: Config) -> None:
    if not config.run.budget:
        return
    planned = strategy_phases(config.run.strategy)
    for name, p, _ in phases(config):
        _require(name not in planned or p.schedule != "step",
                 f"run.budget plans phases that end annealed (lr at zero at the budget's end), but {name}.schedule = "
                 f"\"step\": set {name}.schedule = \"linear\" (robust for budgets, Li et al. 2020) or \"cosine\"")


def validate(config: Config) -> None:
    """Every key's Check, then every relation; raises BadInput on the first problem. Pure: needs no
    data, no model and no device, so every rank reaches the same verdict before any collective."""
    for name, section in SECTIONS.items():
        values = getattr(config, section.name)
        for f in dataclasses.fields(values):
            problem = f.metadata[_CHECK].problem(f"{name}.{f.name}", getattr(values, f.name))
            if problem:
                raise BadInput(problem)
    for check in RELATIONS:
        check(config)
