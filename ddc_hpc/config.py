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
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .budget import parse_budget
from .errors import BadInput

STRATEGIES = ("ddc", "random", "both")
BACKENDS = ("auto", "gloo", "nccl", "mpi", "mpi4py")
OPTIMIZERS = ("adam", "sgd")
TASKS = ("classification", "regression", "autoencoder")
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
class ModelConfig:
    name: str = "cifar_resnet20"
    width: int = 32
    num_classes: int = 10  # for regression: the number of targets
    task: str = "classification"
    loss: str = "auto"  # cross_entropy for classification, mse otherwise

    @property
    def loss_name(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if self.task == "classification" else "mse"


@dataclass(frozen=True)
class DecomposeConfig:
    partitions: int = 4
    grid: tuple[int, ...] = ()  # empty: the most nearly square grid of `partitions` tiles
    overlap: int = 0
    crop: int = 0


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    val_fraction: float = 0.2
    limit: int = 0  # 0: every training sample
    val_limit: int = 0  # 0: the whole validation split; N: a stratified N of it (quick tuning trials)
    in_memory: bool = True
    augment: bool = True
    max_shift: int = 2  # pixels; the paper's random shift, kept small for 16x16 tiles


@dataclass(frozen=True)
class PhaseConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    gammas: tuple[float, ...] = ()  # one factor per milestone (the paper's /10 and /2); empty: gamma at each
    plateau_patience: int = 0  # 0: off; the paper divides the lr by sqrt(10) after 5 flat epochs
    plateau_factor: float = 1 / math.sqrt(10)
    schedule: str = "step"  # step: milestones; cosine / linear: decay to zero over the phase, per step
    warmup_epochs: float = 0.0  # linear warm-up from lr / warm-up steps to lr; fractions of an epoch allowed
    steps_per_epoch: int = 0  # 0: an epoch is one pass; N: N steps, the data continuing across epochs
    bn_recalibrate_batches: int = 0  # 0: off; N: BatchNorm statistics from N batches before each evaluation
    # [global] only: also score the composed net with the tiles' BN statistics, before recalibrating
    evaluate_before_recalibration: bool = True
    compile: str = ""  # "": eager; a torch.compile backend (COMPILE_BACKENDS) compiles the network
    eval_every: int = 1  # epochs between validation scores; 0: only after the phase's last epoch
    # [global] only, levers at composition: carry the sub-networks' Adam moments into GNet-T's
    # optimizer (composed block-diagonally like the weights, step counts kept); shrink and perturb
    # the composed weights (Ash & Adams 2020): w <- shrink * w + perturb * w_init, w_init a fresh init.
    carry_optimizer: bool = False
    shrink: float = 1.0
    perturb: float = 0.0

    @property
    def milestone_factors(self) -> tuple[float, ...]:
        return self.gammas or (self.gamma,) * len(self.milestones)


@dataclass(frozen=True)
class RunConfig:
    strategy: str = "both"
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"
    threads: int = 0  # 0: cores of this node / ranks on this node
    deterministic: bool = False
    # Autocast dtype of forward and loss; parameters, optimizer state and composition stay fp32.
    precision: str = "fp32"
    checkpoint_every: int = 1  # epochs; 0: only on signals and at phase ends
    collective_timeout: float = 300.0  # seconds a collective may wait before the job is ended
    progress_seconds: float = 30.0  # at most one progress line per this many seconds within an epoch; 0: none
    # A wall-time budget for each strategy: "" none (epochs decide), seconds ("600", 600), "20min",
    # "1h", or "slurm" (the job's remaining time less a margin, shared by the strategies). The
    # planner (budget.py) then sets every phase's steps; a resume keeps the recorded plan.
    budget: str = ""
    sub_share: float = 0.3  # with a budget: the sub phase's share of DDC's training time


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
        return {_toml_name(f.name): dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

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
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if where == "run.budget" and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"  # seconds, as a number
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, annotation)
    if not ok:
        example = {int: "5", float: "0.001", bool: "true", str: '"text"'}.get(annotation, "...")
        key = where.split("[")[0]
        if key != where:  # an element of a list
            example = f"[{example}, {example}]"
        raise BadInput(f"{where} must be {_KIND_NAMES.get(annotation, annotation.__name__)}, got "
                       f"{type(value).__name__} {value!r}; values use TOML syntax: in a job file "
                       f"{key.split('.')[-1]} = {example} under [{key.split('.')[0]}], on the command line "
                       f"--set {key}={example.strip(chr(34)).replace(' ', '')}")
    return value


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


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BadInput(message)


def _one_of(where: str, value: str, choices) -> None:
    _require(value in choices, f"{where} = {value!r} is not one of {', '.join(choices)}{_did_you_mean(value, choices)}")


def validate(config: Config) -> None:
    """Ranges and choices that need no data and no model; raises BadInput on the first problem."""
    m, d, r = config.model, config.decompose, config.run
    _require(m.num_classes >= 1, f"model.num_classes must be >= 1, got {m.num_classes}")
    _require(m.width >= 1, f"model.width must be >= 1, got {m.width}")
    _one_of("model.task", m.task, TASKS)
    _one_of("model.loss", m.loss, LOSSES)
    _require((m.loss_name == "cross_entropy") == (m.task == "classification"),
             f"model.loss = {m.loss!r} does not fit model.task = {m.task!r}: classification uses "
             "cross_entropy, regression and autoencoder use mse or l1")
    _require(d.partitions >= 1, f"decompose.partitions must be >= 1, got {d.partitions}")
    _require(d.overlap >= 0 and d.crop >= 0, "decompose.overlap and decompose.crop must be >= 0")
    if d.grid:
        _require(
            all(g >= 1 for g in d.grid) and math.prod(d.grid) == d.partitions,
            f"decompose.grid = {list(d.grid)} has {math.prod(d.grid)} tiles but decompose.partitions = "
            f"{d.partitions}; the grid must have exactly one tile per sub-network",
        )
    data = config.data
    _require(0.0 < data.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {data.val_fraction}")
    _require(data.limit >= 0, f"data.limit must be >= 0 (0 = all samples), got {data.limit}")
    _require(data.val_limit >= 0, f"data.val_limit must be >= 0 (0 = the whole split), got {data.val_limit}")
    _require(data.max_shift >= 0, f"data.max_shift must be >= 0, got {data.max_shift}")
    for name in ("sub", "global", "random"):
        p = getattr(config, name if name != "global" else "global_")
        _require(p.epochs >= 0, f"{name}.epochs must be >= 0, got {p.epochs}")
        _require(p.batch_size >= 1, f"{name}.batch_size must be >= 1, got {p.batch_size}")
        _require(math.isfinite(p.lr) and p.lr > 0, f"{name}.lr must be a positive number, got {p.lr}")
        _one_of(f"{name}.optimizer", p.optimizer, OPTIMIZERS)
        _require(0 < p.gamma <= 1 and 0 < p.plateau_factor <= 1, f"{name}.gamma and plateau_factor must be in (0, 1]")
        _require(p.plateau_patience >= 0, f"{name}.plateau_patience must be >= 0")
        _require(list(p.milestones) == sorted(set(p.milestones)) and all(x > 0 for x in p.milestones),
                 f"{name}.milestones must be increasing positive epochs, got {list(p.milestones)}")
        _one_of(f"{name}.schedule", p.schedule, SCHEDULES)
        _require(not p.gammas or len(p.gammas) == len(p.milestones),
                 f"{name}.gammas has {len(p.gammas)} factors for {len(p.milestones)} milestones: give one factor "
                 "per milestone (e.g. milestones = [20, 40, 60], gammas = [0.1, 0.1, 0.5]), or none to use gamma")
        _require(all(0 < g <= 1 for g in p.gammas), f"{name}.gammas must be in (0, 1], got {list(p.gammas)}")
        _require(p.schedule == "step" or not p.milestones,
                 f"{name}.milestones are for schedule = \"step\"; a {p.schedule} schedule decays to zero over "
                 f"the whole phase: remove {name}.milestones or set {name}.schedule = \"step\"")
        epochs = config.random_epochs if name == "random" else p.epochs
        if r.budget:  # the plan sets the epochs; the warm-up counts passes over the data
            _require(math.isfinite(p.warmup_epochs) and p.warmup_epochs >= 0,
                     f"{name}.warmup_epochs must be >= 0, got {p.warmup_epochs}")
        else:
            _require(math.isfinite(p.warmup_epochs) and 0 <= p.warmup_epochs <= max(epochs, 0),
                     f"{name}.warmup_epochs must be between 0 and the phase's {epochs} epochs, got {p.warmup_epochs}")
        _require(p.eval_every >= 0, f"{name}.eval_every must be >= 0 (0 = only after the phase's last epoch), "
                 f"got {p.eval_every}")
        if name != "global":
            default = PhaseConfig()
            for key in ("carry_optimizer", "shrink", "perturb"):
                _require(getattr(p, key) == getattr(default, key),
                         f"{name}.{key} is a [global] setting (GNet-T's start from the composed net): remove it "
                         f"from [{name}]")
        else:
            _require(math.isfinite(p.shrink) and 0 < p.shrink <= 1, f"global.shrink must be in (0, 1], got {p.shrink}")
            _require(math.isfinite(p.perturb) and p.perturb >= 0, f"global.perturb must be >= 0, got {p.perturb}")
            _require(not p.carry_optimizer or (p.optimizer == "adam" and config.sub.optimizer == "adam"),
                     "global.carry_optimizer composes the sub-networks' Adam moments: it needs sub.optimizer and "
                     "global.optimizer = \"adam\"")
        _require(p.steps_per_epoch >= 0, f"{name}.steps_per_epoch must be >= 0 (0 = one pass over the data), "
                 f"got {p.steps_per_epoch}")
        _require(p.bn_recalibrate_batches >= 0, f"{name}.bn_recalibrate_batches must be >= 0 (0 = off), got "
                 f"{p.bn_recalibrate_batches}")
        _one_of(f"{name}.compile", p.compile, COMPILE_BACKENDS)
        _require(name == "global" or p.evaluate_before_recalibration,
                 f"{name}.evaluate_before_recalibration is a [global] setting (GNet-T as composed): remove it "
                 f"from [{name}]")
    _one_of("run.strategy", r.strategy, STRATEGIES)
    _one_of("run.backend", r.backend, BACKENDS)
    _one_of("run.device", r.device, DEVICES)
    _one_of("run.precision", r.precision, PRECISIONS)
    _require(r.threads >= 0, f"run.threads must be >= 0 (0 = automatic), got {r.threads}")
    _require(r.checkpoint_every >= 0, f"run.checkpoint_every must be >= 0, got {r.checkpoint_every}")
    _require(r.collective_timeout > 0, f"run.collective_timeout must be > 0 seconds, got {r.collective_timeout}")
    _require(r.progress_seconds >= 0, f"run.progress_seconds must be >= 0 (0 = no progress lines within an epoch), "
             f"got {r.progress_seconds}")
    if r.strategy != "random" and not r.budget:
        _require(config.sub.epochs >= 1, "sub.epochs must be >= 1 when the strategy trains sub-networks")
    _require(math.isfinite(r.sub_share) and 0 < r.sub_share < 1, f"run.sub_share must be in (0, 1), got {r.sub_share}")
    if r.budget:
        try:
            parse_budget(r.budget)
        except ValueError as err:
            raise BadInput(f"run.budget: {err}") from None
        planned = {"ddc": ("sub", "global"), "random": ("random",), "both": ("sub", "global", "random")}[r.strategy]
        for name in planned:
            p = getattr(config, name if name != "global" else "global_")
            _require(p.schedule != "step", f"run.budget plans phases that end annealed (lr at zero at the budget's "
                     f"end), but {name}.schedule = \"step\": set {name}.schedule = \"linear\" (robust for "
                     "budgets, Li et al. 2020) or \"cosine\"")
