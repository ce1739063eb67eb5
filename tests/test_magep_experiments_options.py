"""Command-line options of `benchmarks.magep_experiments` that need no training: zoo epochs per dataset."""
import pytest

from benchmarks import magep_experiments as mx


def test_zoo_epochs_bare_value_sets_every_dataset_and_entries_override_defaults():
    args = mx.parser().parse_args(["generalization", "--zoo-epochs", "2", "cifar10_gs=7"])
    epochs = mx.resolve_zoo_epochs(args.zoo_epochs, ["mnist", "cifar10_gs"], mx.FULL["zoo_epochs"])
    assert epochs["mnist"] == 2 and epochs["cifar10_gs"] == 7
    defaults = mx.resolve_zoo_epochs(None, mx.FULL["datasets"], mx.FULL["zoo_epochs"])
    assert defaults == {"mnist": 3, "fashion_mnist": 3, "cifar10_gs": 10}


def test_zoo_epochs_rejects_unknown_dataset_and_missing_epochs(capsys):
    with pytest.raises(SystemExit):
        mx.parser().parse_args(["generalization", "--zoo-epochs", "svhn=3"])
    assert "unknown dataset 'svhn'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no epochs for \['digits'\]"):
        mx.resolve_zoo_epochs([("mnist", 3)], ["mnist", "digits"], {})
