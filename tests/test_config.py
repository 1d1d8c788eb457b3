"""Config: TOML + --set overrides -> frozen dataclasses; every bad value is a BadInput."""

import os

import pytest
import torch

from conftest import REPO
from ddc_hpc.config import load_config, parse_override
from ddc_hpc.errors import BadInput


def test_defaults_are_the_quickstart():
    c = load_config()
    assert (c.model.name, c.decompose.partitions, c.run.strategy, c.data.source) == (
        "cifar_resnet20", 4, "both", "synthetic")
    assert c.random_epochs == c.sub.epochs + c.global_.epochs


def test_file_and_overrides_combine(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[model]\nname = "cnn11"\n[global]\nepochs = 7\nmilestones = [2, 5]\n')
    c = load_config(path, ["global.lr=0.01", "data.source=npz:/tmp/x.npz", "decompose.grid=[1, 4]"])
    assert c.model.name == "cnn11" and c.global_.epochs == 7 and c.global_.milestones == (2, 5)
    assert c.global_.lr == 0.01 and c.data.source == "npz:/tmp/x.npz" and c.decompose.grid == (1, 4)


def test_resolved_config_round_trips_through_toml(tmp_path):
    c = load_config(None, ["sub.epochs=9", "decompose.overlap=4"])
    (tmp_path / "config.toml").write_text(c.to_toml())
    assert load_config(tmp_path / "config.toml").digest() == c.digest()


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=word") == (["a", "b"], "word")
    assert parse_override("a.b=true") == (["a", "b"], True)


@pytest.mark.parametrize("override, expected", [
    ("sub.epoch=3", "did you mean 'sub.epochs'"),
    ("sbu.epochs=3", "did you mean 'sub'"),
    ("sub.lr=fast", "sub.lr must be a number"),
    ("sub.batch_size=0", "sub.batch_size must be >= 1"),
    ("global.epochs=2.5", "global.epochs must be a whole number"),
    ("decompose.grid=[2, 3]", "exactly one tile per sub-network"),
    ("run.backend=ncll", "did you mean 'nccl'"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("sub.milestones=[5, 2]", "increasing"),
    ("nodot=1", "section.key"),
    ("random.evaluate_before_recalibration=false", "a [global] setting"),
    ("sub.compile=induktor", "did you mean 'inductor'"),
])
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(BadInput, match=expected.replace("[", r"\[")):
        load_config(None, [override])


def test_unreadable_config_files(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    with pytest.raises(BadInput, match="not valid TOML"):
        load_config(bad)


def test_quickstart_job_file_is_the_built_in_default():
    from pathlib import Path

    job = Path(__file__).resolve().parents[1] / "jobs" / "quickstart.toml"
    assert load_config(job).digest() == load_config().digest()


@pytest.mark.parametrize("override, suggestion", [
    ("sub.epoch=3", "did you mean 'sub.epochs'?"),
    ("run.colective_timeout=3", "did you mean 'run.collective_timeout'?"),
])
def test_did_you_mean_names_the_full_key(override, suggestion):
    with pytest.raises(BadInput) as err:
        load_config(None, [override])
    assert suggestion in str(err.value)


def test_a_missing_config_file_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(BadInput) as err:
        load_config("jobs/quikstart.toml")
    assert "did you mean jobs/quickstart.toml?" in str(err.value)
    assert "leave out --config to run the built-in quickstart" in str(err.value)


def test_a_value_of_the_wrong_type_shows_the_toml_syntax():
    with pytest.raises(BadInput) as err:
        load_config(None, ["sub.epochs=five"])
    assert "epochs = 5 under [sub]" in str(err.value) and "--set sub.epochs=5" in str(err.value)


def test_progress_seconds_must_not_be_negative():
    assert load_config(None, ["run.progress_seconds=0"]).run.progress_seconds == 0
    with pytest.raises(BadInput, match="run.progress_seconds must be >= 0"):
        load_config(None, ["run.progress_seconds=-1"])


def test_val_limit_reaches_the_loaded_validation_split():
    from ddc_hpc.data import load_from_config

    config = load_config(None, ['data.source="synthetic:n=400"', "data.val_fraction=0.25", "data.val_limit=40"])
    assert len(load_from_config(config).val) == 40
    with pytest.raises(BadInput, match="data.val_limit must be >= 0"):
        load_config(None, ["data.val_limit=-1"])


def test_the_resume_digest_covers_what_trains_not_how_the_run_executes():
    base = load_config()
    for operational in ("run.collective_timeout=900", "run.threads=3", "run.checkpoint_every=0",
                        "run.backend=gloo", "run.device=cpu", "run.progress_seconds=5"):
        changed = load_config(overrides=[operational])
        assert changed.digest() == base.digest() and changed.full_digest() != base.full_digest(), operational
    for semantic in ("run.seed=1", "run.strategy=ddc", "run.deterministic=true", "sub.lr=0.1", "model.width=16",
                     "decompose.overlap=4", "data.limit=10"):
        assert load_config(overrides=[semantic]).digest() != base.digest(), semantic


def test_deterministic_on_cuda_sets_cublas_and_says_what_stays_nondeterministic(monkeypatch):
    from ddc_hpc import comm

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        note = comm.configure_determinism(True, "cuda")  # nothing here touches a GPU
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert "NOT deterministic" in note and "adaptive average pooling" in note
        note = comm.configure_determinism(True, "cpu")
        assert not torch.is_deterministic_algorithms_warn_only_enabled() and "strict" in note
        assert comm.configure_determinism(False, "cuda") is None
    finally:
        torch.use_deterministic_algorithms(False)


def test_one_level_jobs_keep_their_file_and_digest_and_more_levels_change_it(tmp_path):
    """decompose.levels is left out of a one-level job's record (none, or [K]), so the jobs, runs
    and checkpoints from before levels existed resume; [16, 4] is recorded and round-trips."""
    base = load_config(overrides=["decompose.partitions=16"])
    same = load_config(overrides=["decompose.partitions=16", "decompose.levels=[16]"])
    assert "levels" not in base.to_dict()["decompose"] and same.to_toml() == base.to_toml()
    assert same.digest() == base.digest()
    two = load_config(overrides=["decompose.partitions=16", "decompose.levels=[16, 4]"])
    assert two.digest() != base.digest() and two.decompose.level_counts == (16, 4)
    (tmp_path / "config.toml").write_text(two.to_toml())
    assert load_config(tmp_path / "config.toml").digest() == two.digest()
