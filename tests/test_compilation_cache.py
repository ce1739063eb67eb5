"""JAX's persistent compilation cache in the command lines: on by default with a flag to turn it off, written and
read in a fresh interpreter, and off while the speed benchmarks measure first calls."""
import contextlib
import io
import os
import subprocess
import sys

import jax
import pytest

from benchmarks import (demo, magep_experiments, magep_layers, stsw_flows, tnfn_layers, tnfn_zoo_throughput,
                        tsw_colour_transfer, tsw_flows, tsw_generate, tsw_speed, vs_reference_ours, zoo_throughput)
from benchmarks import harness
from common import compilation_cache
from magep import zoo as magep_zoo
from transformer_nfn import zoo as transformer_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_LINES = {"magep.zoo cnn": (magep_zoo.main, ["cnn"]), "magep.zoo siren": (magep_zoo.main, ["siren"]),
                 "transformer_nfn.zoo": (transformer_zoo.main, []),
                 "magep_experiments": (magep_experiments.main, ["generalization"]),
                 "tsw_flows": (tsw_flows.main, []), "stsw_flows": (stsw_flows.main, []),
                 "tsw_colour_transfer": (tsw_colour_transfer.main, []), "tsw_generate": (tsw_generate.main, []),
                 "demo": (demo.main, [])}


@pytest.mark.parametrize("name", COMMAND_LINES)
def test_every_command_line_has_the_cache_options(name):
    main, argv = COMMAND_LINES[name]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(argv + ["--help"])
    assert "--no-compilation-cache" in out.getvalue() and "--compilation-cache-dir" in out.getvalue()


def test_flag_turns_it_off_and_a_set_cache_is_kept(tmp_path):
    parser = tsw_flows.report.parser("x")
    assert compilation_cache.configure(parser.parse_args(["--no-compilation-cache"])) is None
    # the test session configured a cache already: it is kept, whatever folder the options name
    kept = compilation_cache.configure(parser.parse_args(["--compilation-cache-dir", str(tmp_path)]))
    assert kept == jax.config.jax_compilation_cache_dir and not os.listdir(tmp_path)


_FRESH = """
import os, sys
import jax, jax.numpy as jnp
from common import compilation_cache
folder = compilation_cache.enable(sys.argv[1], min_compile_seconds=0)
count = lambda: len(os.listdir(folder))
jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(3)).block_until_ready()
written = count()
with compilation_cache.disabled():
    jax.jit(lambda x: jnp.cos(x) * 5.0)(jnp.ones(3)).block_until_ready()
while_off = count()
jax.jit(lambda x: jnp.tan(x) * 7.0)(jnp.ones(3)).block_until_ready()
print(written, while_off, count())
"""


def test_cache_is_written_in_a_fresh_interpreter_except_while_disabled(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "cache")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written, while_off, after = map(int, result.stdout.split())
    assert written >= 1 and while_off == written and after > written


class _Stop(Exception):
    pass


@pytest.mark.parametrize("module", [tsw_speed, magep_layers, tnfn_layers, zoo_throughput, tnfn_zoo_throughput,
                                    vs_reference_ours],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_speed_benchmarks_measure_first_calls_without_the_cache(module, monkeypatch):
    seen = []

    def record(*args, **kwargs):
        seen.append(jax.config.jax_enable_compilation_cache)
        raise _Stop

    if module is vs_reference_ours:
        monkeypatch.setattr(module.protocol, "job_arguments", record)
    else:
        monkeypatch.setattr(harness, "start_run", record)
    with pytest.raises(_Stop):
        module.main(["--quick"] if module is not vs_reference_ours else [])
    assert seen == [False]
    assert jax.config.jax_enable_compilation_cache  # restored for the rest of the session
