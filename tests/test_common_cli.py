"""Numeric command-line arguments are checked by argparse (`common.cli`): a count of 0 or less, a NaN
learning rate, a non-number exit with the argument named, before any work (docs/input_policy.md)."""
import argparse

import pytest

from common import cli


@pytest.mark.parametrize("parse, text, value", [(cli.positive_int, "3", 3), (cli.non_negative_int, "0", 0),
                                                (cli.positive_float, "1e-3", 1e-3)])
def test_valid_values_parse(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text", [(cli.positive_int, "0"), (cli.positive_int, "-2"), (cli.positive_int, "1.5"),
                                         (cli.non_negative_int, "-1"), (cli.non_negative_int, "x"),
                                         (cli.positive_float, "0"), (cli.positive_float, "nan"),
                                         (cli.positive_float, "inf"), (cli.positive_float, "-1e-3")])
def test_invalid_values_raise_argument_type_error(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be .*; got '{text}'"):
        parse(text)


def _main(module):
    return __import__(module, fromlist=["main"]).main


@pytest.mark.parametrize("module, argv, argument, expected", [
    # before: an empty zoo, then "max() arg is an empty sequence"
    ("magep.zoo", ["cnn", "--dataset", "digits", "--models", "0"], "--models", "an int >= 1; got '0'"),
    ("magep.zoo", ["cnn", "--dataset", "digits", "--models", "-3"], "--models", "an int >= 1; got '-3'"),
    # before: ZeroDivisionError
    ("magep.zoo", ["cnn", "--dataset", "digits", "--models", "4", "--shard-size", "0"], "--shard-size", ">= 1"),
    ("magep.zoo", ["cnn", "--dataset", "digits", "--models", "4", "--batch-size", "0"], "--batch-size", ">= 1"),
    ("magep.zoo", ["siren", "--dataset", "mnist", "--models", "4", "--lr", "nan"], "--lr", "a finite number > 0"),
    ("transformer_nfn.zoo", ["--dataset", "mnist", "--models", "2", "--shard-size", "0"], "--shard-size", ">= 1"),
    # before: 0 silently replaced by the default
    ("benchmarks.tsw_flows", ["--runs", "0"], "--runs", ">= 1"),
    ("benchmarks.tsw_flows", ["--steps", "0"], "--steps", ">= 1"),
    ("benchmarks.tsw_colour_transfer", ["--colours", "0"], "--colours", ">= 1"),
    ("benchmarks.tsw_generate", ["--n-eval", "0"], "--n-eval", ">= 1"),
    ("benchmarks.zoo_throughput", ["--batch-size", "0"], "--batch-size", ">= 1"),
    ("benchmarks.zoo_throughput", ["--chunks", "0"], "--chunks", ">= 1"),
    ("benchmarks.magep_layers", ["--repeats", "0"], "--repeats", ">= 1"),
    ("benchmarks.magep_experiments", ["generalization", "--models", "0"], "--models", ">= 1"),
])
def test_cli_rejects_bad_numbers_before_any_work(module, argv, argument, expected, tmp_path, capsys):
    needs_out = module.endswith(".zoo")
    with pytest.raises(SystemExit) as exit_:
        _main(module)(argv + (["--out", str(tmp_path / "zoo")] if needs_out else []))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argument}" in err and expected in err, err
    assert not (tmp_path / "zoo").exists()  # nothing written


def test_compile_arguments_carry_both_settings_and_configure_applies_both(monkeypatch):
    """`add_compile_arguments` gives a parser the compilation cache's and LLVM's options; `configure_compiles`
    applies both, in that order."""
    from common import compilation_cache, llvm_options

    parser = argparse.ArgumentParser()
    cli.add_compile_arguments(parser)
    args = parser.parse_args(["--no-compilation-cache", "--llvm-unroll"])
    assert args.compilation_cache is False and args.llvm_unroll is True and args.compilation_cache_dir is None
    calls = []
    monkeypatch.setattr(compilation_cache, "configure", lambda a: calls.append(("cache", a)))
    monkeypatch.setattr(llvm_options, "configure", lambda a: calls.append(("llvm", a)))
    cli.configure_compiles(args)
    assert calls == [("cache", args), ("llvm", args)]
