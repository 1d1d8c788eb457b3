"""Every config key declares its constraint beside it (config.key / config.Check) and validate()
applies the whole table, then the relations between keys: a value is refused with exit 2 before
any work, or it trains. The property test draws configurations from valid and invalid values of
every key and holds each to exactly that."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import typing

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import results, run_pipeline_here
from ddc_hpc import config as config_module
from ddc_hpc.budget import budgets_per_strategy
from ddc_hpc.config import SECTIONS, Check, _coerce, key, load_config, phases
from ddc_hpc.data import make_batch
from ddc_hpc.errors import BadInput
from ddc_hpc.run import main, prepare
from ddc_hpc.train import epoch_order, lr_at, make_optimizer, step_seed, steps_per_epoch


@pytest.mark.parametrize("overrides, expected", [
    (["global.weight_decay=-1"], "global.weight_decay must be >= 0, got -1"),
    (["run.collective_timeout=inf"], "run.collective_timeout must be a finite number"),
    (["run.collective_timeout=nan"], "run.collective_timeout must be a finite number"),
    (["run.collective_timeout=1e300"], "run.collective_timeout must be in (0, 2592000] seconds"),
    (["sub.optimizer=sgd", "sub.momentum=-0.5"], "sub.momentum must be in [0, 1), got -0.5"),
    (["random.lr=inf"], "random.lr must be a finite number > 0"),
    (["sub.weight_decay=nan"], "sub.weight_decay must be a finite number >= 0"),
    (["run.progress_seconds=inf"], "run.progress_seconds must be a finite number"),
    (["global.plateau_factor=1.0"], "global.plateau_factor must be in (0, 1)"),
    (["run.seed=-1"], "run.seed must be in [0, 4294967295]"),
    (["sub.warmup_epochs=nan"], "sub.warmup_epochs must be a finite number, got nan"),
    (["decompose.grid=[-2, -2]"], "decompose.grid must be >= 1, got -2 (element 0 of [-2, -2]"),
    (["run.threads=100000"], "run.threads must be in [0, 4096]"),
    (["data.source=imagenet:/x"], "unknown data source 'imagenet:/x'"),
])
def test_values_torch_or_timedelta_would_refuse_mid_run_are_bad_input(overrides, expected):
    with pytest.raises(BadInput) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


@pytest.mark.parametrize("override", ["global.weight_decay=-1", "run.collective_timeout=inf",
                                      "run.collective_timeout=1e300"])
def test_the_reported_values_exit_2_before_any_work(override, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(out), "--set", "sub.optimizer=sgd", "--set", override])
    assert exited.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    assert not out.exists()  # refused before the output folder was made


def test_a_validation_split_left_empty_is_bad_input(tmp_path, capsys):
    """The composed net's Theorem 2.1 probe is drawn from the validation split: empty, compose crashed."""
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(tmp_path / "run"), "--set", "data.source=synthetic:n=60,size=16", "--set",
              "data.val_fraction=0.001"])
    assert exited.value.code == 2 and "leaves no validation sample" in capsys.readouterr().err


def test_a_key_without_a_check_is_refused_when_its_section_is_defined():
    with pytest.raises(TypeError, match="declare no Check"):
        @config_module._checked
        class Section:
            epochs: int = 3


def test_every_key_of_every_section_declares_a_check():
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section.default_factory()):
            assert isinstance(f.metadata.get(config_module._CHECK), Check), f"{name}.{f.name}"


def test_a_key_may_be_a_number_or_a_string():
    """run.budget's shape: seconds, or a string such as "20min" read by the key's own text check."""
    def duration(text: str) -> None:
        if text not in ("20min", "1h", "slurm"):
            raise BadInput(f"run.budget = {text!r} is not a duration such as \"20min\" or \"1h\", or \"slurm\"")

    annotation = float | str
    check = Check(above=0, text=duration, unit=" seconds")
    assert _coerce("run.budget", 30, annotation) == 30.0 and _coerce("run.budget", "1h", annotation) == "1h"
    with pytest.raises(BadInput, match="run.budget must be a number or a string, got bool"):
        _coerce("run.budget", True, annotation)
    assert check.problem("run.budget", 30.0) is None and check.problem("run.budget", "slurm") is None
    assert "run.budget must be > 0 seconds, got -5" in check.problem("run.budget", -5.0)
    assert "finite" in check.problem("run.budget", math.inf)
    with pytest.raises(BadInput, match="not a duration"):
        check.problem("run.budget", "2 fortnights")
    field = key(60.0, above=0, text=duration)
    assert field.default == 60.0 and field.metadata[config_module._CHECK].text is duration


# ------------------------------------------------------------------ the property: refused, or it trains

SAMPLES = 48  # synthetic images of 16x16 px: the plan is built from their metadata, nothing trains
BASE = ["data.source=synthetic:n=60,size=16", "model.width=8"]
ABSURD = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.sampled_from([0, -1, 1, 2**31, 2**62]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -0.0]),
    st.booleans(), st.text(max_size=12), st.lists(st.integers(min_value=-3, max_value=40), max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
)


# run.budget: numbers in any notation, durations, "slurm" (there is no SLURM job here), junk
BUDGETS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-05, 2.5e-300, 0.0, 7]),
                    st.builds("{}{}".format, st.floats(-1, 1e6).map(lambda x: f"{x:.3g}"),
                              st.sampled_from(["", "s", " min", "h", "x", "sec", "1"])),
                    st.sampled_from(["slurm", "SLURM", "1e-05", "1E3s", ".5h", "-5", "inf", ""]), st.text(max_size=6))


def _hints(section: str) -> dict:
    return typing.get_type_hints(type(SECTIONS[section].default_factory()))


def _plausible(section: str, name: str):
    """Values of the key's own type near its declared bounds and choices (valid and just invalid)."""
    f = {f.name: f for f in dataclasses.fields(SECTIONS[section].default_factory())}[name]
    check, kind = f.metadata[config_module._CHECK], _hints(section)[name]
    element = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
    if check.choices:
        names = check.choices() if callable(check.choices) else check.choices
        value = st.sampled_from([*names, "x" + names[0]] if names[0] else [*names, "bogus"])
    elif element is bool:
        value = st.booleans()
    elif element is int:
        low = int(check.at_least if check.at_least is not None else (check.above or 0))
        value = st.integers(min_value=low - 2, max_value=low + 6)
    elif element is float:
        low = check.at_least if check.at_least is not None else (check.above or 0.0)
        high = check.at_most if check.at_most is not None else (check.below if check.below is not None else 4.0)
        value = st.one_of(st.floats(min_value=low, max_value=high), st.sampled_from([low, high, low - 0.5]))
    elif kind == float | str:
        value = BUDGETS
    else:
        value = st.just(getattr(SECTIONS[section].default_factory(), name))
    return st.lists(value, max_size=4).map(tuple) if element is not kind else value


KEYS = [(s, f.name) for s in SECTIONS for f in dataclasses.fields(SECTIONS[s].default_factory())
        if (s, f.name) != ("data", "source")]
SETTING = st.sampled_from(KEYS).flatmap(
    lambda k: st.tuples(st.just(k), st.integers(0, 4).flatmap(  # mostly near the bounds, one in five absurd
        lambda pick: ABSURD if pick == 0 else _plausible(*k))))


def _override(section: str, name: str, value) -> str:
    text = tomli_w.dumps({"v": list(value) if isinstance(value, tuple) else value}).strip()
    return f"{section}.{name}={text.partition('=')[2].strip()}"


def assert_trains(plan) -> None:
    """What the run does with the values before and while training, in this process and cheaply:
    the optimizer and plateau rule accept them, every step's lr is a finite number, the seeds and
    the collective deadline are in range, and a batch of the sub-networks' tiles can be made."""
    cfg, n = plan.config, len(plan.data.train)
    if cfg.run.budget:  # seconds each strategy is planned for (no SLURM job here: "slurm" was refused)
        assert budgets_per_strategy(cfg.run.budget, ["ddc", "random"], None)["ddc"] > 0
    for name, p, epochs in phases(cfg):
        p = dataclasses.replace(p, epochs=epochs)
        param = torch.nn.Parameter(torch.ones(3))
        optimizer = make_optimizer([param], p)
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=p.plateau_factor,
                                                   patience=max(p.plateau_patience, 1))
        steps = steps_per_epoch(p, n)
        total = epochs * steps
        warm = round(p.warmup_epochs * steps)
        probes = {0, total - 1, warm - 1, warm, *(m * steps for m in p.milestones), *(total * i // 50 for i in range(50))}
        for t in sorted(x for x in probes if 0 <= x < total):
            lr = lr_at(p, *divmod(t, steps), steps)
            assert math.isfinite(lr) and lr >= 0, (name, t, lr)
        param.grad = torch.ones(3)
        optimizer.step()
        epoch_order(n, cfg.run.seed * 1000 + cfg.decompose.partitions, max(epochs, 1), None)
        step_seed(cfg.run.seed * 1000 + cfg.decompose.partitions, epochs, steps)
    torch.Generator().manual_seed(cfg.run.seed * 1000 + cfg.decompose.partitions + 1)
    torch.Generator().manual_seed(cfg.run.seed + config_module.RANDOM_INIT_SEED_OFFSET)
    datetime.timedelta(seconds=cfg.run.collective_timeout)
    images = torch.zeros((2, *plan.data.train.image_shape), dtype=torch.uint8)
    make_batch(images, mean=torch.zeros(images.shape[-1]), tile=plan.tiles[0], augment=cfg.data.augment,
               generator=torch.Generator().manual_seed(0), max_shift=cfg.data.max_shift)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(settings_=st.lists(SETTING, min_size=1, max_size=3))
def test_a_config_is_refused_before_any_work_or_it_trains(settings_, tmp_path_factory, one_thread):
    overrides = [*BASE, *(_override(s, k, v) for (s, k), v in settings_)]
    args = argparse.Namespace(config=None, set=overrides, out=str(tmp_path_factory.getbasetemp() / "never"),
                              resume=False, dry_run=True, debug=False)
    try:
        plan = prepare(args)
    except BadInput as err:
        assert str(err).strip(), overrides
        return
    assert_trains(plan)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=BUDGETS)
def test_a_budget_the_run_would_refuse_is_refused_before_any_work(value, tmp_path_factory):
    """Every budget prepare lets through is one the run plans with (seconds, in any notation);
    whatever it refuses ("slurm" outside a SLURM job included) is refused before the out dir exists."""
    out = tmp_path_factory.mktemp("budget") / "run"
    overrides = [*BASE, "sub.schedule=linear", "global.schedule=linear", "random.schedule=linear",
                 _override("run", "budget", value)]
    args = argparse.Namespace(config=None, set=overrides, out=str(out), resume=False, dry_run=False, debug=False)
    try:
        plan = prepare(args)
    except BadInput as err:
        assert str(err).strip() and not out.exists(), overrides
        return
    assert not plan.config.run.budget or budgets_per_strategy(plan.config.run.budget, ["ddc", "random"], None)["ddc"] > 0


@pytest.mark.ranks(1)
def test_unusual_but_valid_values_train_for_real(tmp_path):
    """One real run at the edges the table admits (the property test only builds the plan)."""
    out = tmp_path / "run"
    done = run_pipeline_here(out, "run.strategy=ddc", "data.source=synthetic:n=96,size=16", "sub.optimizer=sgd",
                             "sub.momentum=0", "sub.weight_decay=0.5", "sub.schedule=cosine", "sub.warmup_epochs=1",
                             "sub.plateau_patience=1", "sub.plateau_factor=0.99", "global.steps_per_epoch=2",
                             "global.optimizer=sgd", "global.momentum=0.99", "global.milestones=[1]", "global.gamma=1",
                             "data.max_shift=8", "run.collective_timeout=2592000", "run.seed=4294967295",
                             "run.progress_seconds=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(out)["global"]["epochs"] == 1
