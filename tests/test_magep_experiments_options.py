"""Command-line options of `benchmarks.magep_experiments` that need no training: zoo epochs per dataset
(`benchmarks.studies.per_dataset_entry`, `resolve_per_dataset`)."""
import pytest

from benchmarks import magep_experiments as mx
from benchmarks.studies import resolve_per_dataset


def test_zoo_epochs_bare_value_sets_every_dataset_and_entries_override_defaults():
    args = mx.parser().parse_args(["generalization", "--zoo-epochs", "2", "cifar10_gs=7"])
    epochs = resolve_per_dataset("--zoo-epochs", args.zoo_epochs, ["mnist", "cifar10_gs"], mx.FULL["zoo_epochs"])
    assert epochs["mnist"] == 2 and epochs["cifar10_gs"] == 7
    defaults = resolve_per_dataset("--zoo-epochs", None, mx.FULL["datasets"], mx.FULL["zoo_epochs"])
    assert defaults == {"mnist": 3, "fashion_mnist": 3, "cifar10_gs": 10}


def test_zoo_epochs_rejects_unknown_dataset_and_missing_epochs(capsys):
    with pytest.raises(SystemExit):
        mx.parser().parse_args(["generalization", "--zoo-epochs", "svhn=3"])
    assert "unknown dataset 'svhn'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--zoo-epochs: no value for \['digits'\]"):
        resolve_per_dataset("--zoo-epochs", [("mnist", 3)], ["mnist", "digits"], {})
