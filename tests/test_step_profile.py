"""benchmarks.step_profile: the kernel classification on a hand-written module and on a compiled one, the trace
reader, and a quick run end to end. No assertion on a measured time."""
import gc
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import harness, step_profile
from benchmarks import vs_reference as vs

MODULE = """HloModule m, entry_computation_layout={(f32[8,8]{1,0}, /*index=1*/f32[8,8]{1,0})->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %a, f32[] %b)
}

%fused_product (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  %dot.1 = f32[8,8]{1,0} dot(f32[8,8]{1,0} %p0, f32[8,8]{1,0} %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %max.1 = f32[8,8]{1,0} maximum(f32[8,8]{1,0} %dot.1, f32[8,8]{1,0} %dot.1)
}

%fused_transpose (p0: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  ROOT %t = f32[8,8]{1,0} transpose(f32[8,8]{1,0} %p0), dimensions={1,0}
}

%fused_relu (p0: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %zero = f32[] constant(0)
  %b = f32[8,8]{1,0} broadcast(f32[] %zero), dimensions={}
  ROOT %r = f32[8,8]{1,0} maximum(f32[8,8]{1,0} %p0, f32[8,8]{1,0} %b)
}

%fused_sum (p0: f32[8,8]) -> f32[] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %s = f32[] reduce(f32[8,8]{1,0} %p0, f32[] %zero), dimensions={0,1}, to_apply=%add
}

%body (state: f32[8,8]) -> f32[8,8] {
  %state = f32[8,8]{1,0} parameter(0)
  ROOT %relu.in.loop = f32[8,8]{1,0} fusion(f32[8,8]{1,0} %state), kind=kLoop, calls=%fused_relu
}

%cond (state: f32[8,8]) -> pred[] {
  %state = f32[8,8]{1,0} parameter(0)
  ROOT %go = pred[] constant(false)
}

ENTRY %main (x: f32[8,8], y: f32[8,8]) -> f32[] {
  %x = f32[8,8]{1,0} parameter(0)
  %y = f32[8,8]{1,0} parameter(1)
  %ynn_fusion.1 = f32[8,8]{1,0} fusion(f32[8,8]{1,0} %x, f32[8,8]{1,0} %y), kind=kCustom, calls=%fused_product, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot.2 = f32[8,8]{1,0} dot(f32[8,8]{1,0} %x, f32[8,8]{1,0} %y), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %transpose.fusion = f32[8,8]{1,0} fusion(f32[8,8]{1,0} %dot.2), kind=kLoop, calls=%fused_transpose
  %loop = f32[8,8]{1,0} while(f32[8,8]{1,0} %transpose.fusion), condition=%cond, body=%body
  %rsqrt.1 = f32[8,8]{1,0} rsqrt(f32[8,8]{1,0} %loop)
  %sort.1 = f32[8,8]{1,0} sort(f32[8,8]{1,0} %rsqrt.1), dimensions={1}, to_apply=%add
  ROOT %sum.fusion = f32[] fusion(f32[8,8]{1,0} %sort.1), kind=kLoop, calls=%fused_sum
}
"""


def test_kernel_kinds_sorts_the_kernels_of_a_module_by_kind():
    assert step_profile.kernel_kinds(MODULE) == {
        "ynn_fusion.1": "library", "dot.2": "dot", "transpose.fusion": "layout", "relu.in.loop": "elementwise",
        "rsqrt.1": "elementwise", "sort.1": "other", "sum.fusion": "reduction"}  # no parameter, loop or reducer


def test_kernel_bytes_counts_each_kernels_operands_and_results_as_often_as_a_call_runs_it():
    # 8 x 8 float32 = 256 bytes: the product fusion and the dot read two and write one; the sum writes a scalar
    assert step_profile.kernel_bytes(MODULE) == dict(library=768.0, dot=768.0, layout=512.0, reduction=260.0,
                                                     elementwise=1024.0, other=512.0)
    # two batched products (256 + 96 bytes in, 192 out) and two dots in a loop body run 5 times (int ones too)
    assert step_profile.kernel_bytes(LOOP_MODULE)["dot"] == 2 * (256 + 96 + 192) + 5 * 2 * 3 * 256
    f = jax.jit(lambda x, y: jnp.sum(jax.nn.relu(x @ y) * jnp.cos(x)))  # no loop: XLA counts a loop's body once
    compiled = f.lower(jnp.ones((256, 256)), jnp.ones((256, 256))).compile()
    moved = sum(step_profile.kernel_bytes(compiled.as_text()).values())
    assert moved == pytest.approx(harness.xla_cost(compiled)["bytes_accessed"], rel=0.1)  # XLA's own count


def test_kernel_kinds_of_a_compiled_step_cover_its_products_and_reductions():
    f = jax.jit(jax.grad(lambda a, b: jnp.sum(jax.nn.relu(a @ b) ** 2)))
    a = jnp.ones((64, 48))
    kinds = step_profile.kernel_kinds(f.lower(a, jnp.ones((48, 32))).compile().as_text())
    assert set(kinds.values()) <= set(step_profile.KINDS)
    assert {"library", "dot"} & set(kinds.values()), kinds  # the products, whoever runs them


def test_same_program_bytes_counts_only_the_program_a_cell_recorded():
    cell = dict(kernels={"library": 1, "dot": 1, "layout": 1, "elementwise": 2, "other": 1, "reduction": 1},
                products=2, products_flops=2 * (2 * 8 * 8 * 8))  # MODULE's kernels and its two 8 x 8 x 8 products
    assert step_profile.same_program_bytes(cell, MODULE) == step_profile.kernel_bytes(MODULE)
    for other in (dict(kernels=cell["kernels"] | {"layout": 2}), dict(products=3), dict(products_flops=1024.0),
                  dict(kernels=None)):
        assert step_profile.same_program_bytes(cell | other, MODULE) is None, other


LOOP_MODULE = """HloModule loop

%fused_batched (p0: f32[2,8,4], p1: f32[2,4,3]) -> f32[2,8,3] {
  %p0 = f32[2,8,4]{2,1,0} parameter(0)
  %p1 = f32[2,4,3]{2,1,0} parameter(1)
  ROOT %bmm = f32[2,8,3]{2,1,0} dot(%p0, %p1), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

%body (state: f32[8,8]) -> f32[8,8] {
  %state = f32[8,8]{1,0} parameter(0)
  %ids = s32[8,8]{1,0} constant({...})
  %count = s32[8,8]{1,0} dot(%ids, %ids), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %square = f32[8,8]{1,0} dot(%state, %state), lhs_contracting_dims={0}, rhs_contracting_dims={0}
}

%cond (state: f32[8,8]) -> pred[] {
  %state = f32[8,8]{1,0} parameter(0)
  ROOT %go = pred[] constant(false)
}

ENTRY %main (x: f32[2,8,4], y: f32[2,4,3], z: f32[8,8]) -> f32[8,8] {
  %x = f32[2,8,4]{2,1,0} parameter(0)
  %y = f32[2,4,3]{2,1,0} parameter(1)
  %z = f32[8,8]{1,0} parameter(2)
  %first = f32[2,8,3]{2,1,0} fusion(%x, %y), kind=kCustom, calls=%fused_batched
  %second = f32[2,8,3]{2,1,0} fusion(%x, %y), kind=kCustom, calls=%fused_batched
  ROOT %loop = f32[8,8]{1,0} while(%z), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
}
"""


def test_products_lists_each_dot_with_the_times_a_call_runs_it():
    square = dict(lhs=(8, 8), rhs=(8, 8), dtype="float32", dimension_numbers=(((1,), (0,)), ((), ())))
    assert step_profile.products(MODULE) == [square | {"count": 2}]  # one in a library fusion, one unfused
    batched = dict(lhs=(2, 8, 4), rhs=(2, 4, 3), dtype="float32", dimension_numbers=(((2,), (1,)), ((0,), (0,))))
    found = step_profile.products(LOOP_MODULE)  # a fused computation run twice, a loop body run 5 times, no s32
    assert sorted(found, key=str) == sorted([batched | {"count": 2}, square | {
        "dimension_numbers": (((0,), (0,)), ((), ())), "count": 5}], key=str)
    assert step_profile.product_flops(batched) == 2 * (2 * 8 * 4 * 3)  # 2 x batch x m x k x n


def test_products_of_a_compiled_loop_count_its_trips():
    w = jnp.ones((4, 16, 16))
    x = jnp.ones((32, 16))

    def scanned(w, x):
        return jnp.sum(jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0])

    def unrolled(w, x):
        for i in range(4):
            x = jnp.tanh(x @ w[i])
        return jnp.sum(x)

    found = lambda fn: step_profile.products(jax.jit(jax.grad(fn, (0, 1))).lower(w, x).compile().as_text())
    flops = lambda fn: sum(step_profile.product_flops(p) * p["count"] for p in found(fn))
    assert flops(scanned) == flops(unrolled) == 4 * 3 * (2 * 32 * 16 * 16)  # per layer: forward, dW and dx
    alone = step_profile.products_alone(found(unrolled))
    assert alone["seconds"] > 0 and alone["flops"] == flops(unrolled)


def test_first_call_stages_time_each_stage_and_the_collectors_pauses():
    def step(collect):
        def fn(x):
            if collect:
                gc.collect()  # runs while tracing: a full collection inside the first call
            return jnp.sum(jnp.tanh(x @ x.T))
        return fn

    x = jnp.ones((16, 8))
    callbacks = list(gc.callbacks)
    for collect in (False, True):
        jitted = jax.jit(step(collect))
        stages, compiled = step_profile.first_call_stages(jitted, (x,))
        assert set(stages) == {"trace_s", "lower_s", "compile_s", "first_run_s", "gc_s"}
        assert all(stages[f"{s}_s"] > 0 for s in ("trace", "lower", "compile", "first_run"))
        assert float(compiled(x)) == pytest.approx(float(jitted(x)))  # the executable of that call
        if collect:
            assert stages["gc_s"] > 0
    assert gc.callbacks == callbacks  # the timer is removed again


def test_kernel_times_sums_a_kinds_events_per_call(tmp_path):
    events = [dict(ph="X", name="dot.2", dur=3000), dict(ph="X", name="dot.2", dur=1000),
              dict(ph="X", name="sum.fusion", dur=500), dict(ph="X", name="ThunkExecutor", dur=9000),
              dict(ph="i", name="dot.2")]
    (tmp_path / "plugins").mkdir()
    with gzip.open(tmp_path / "plugins" / "host.perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    times = step_profile.kernel_times(str(tmp_path), {"dot.2": "dot", "sum.fusion": "reduction"}, calls=2)
    assert times == pytest.approx(dict.fromkeys(step_profile.KINDS, 0.0) | {"dot": 2e-3, "reduction": 2.5e-4})
    with pytest.raises(FileNotFoundError, match="no perfetto trace"):
        step_profile.kernel_times(str(tmp_path / "plugins" / "none"), {}, calls=1)


def test_step_profile_quick_run_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "MATMUL_SIZE", 32)
    step_profile.main(["--quick", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "step_profile")
    (cell,) = result["cells"]
    assert "error" not in cell, cell
    assert (cell["job"], cell["batch"], cell["mode"]) == ("ours_monomial", 8, "fwdbwd")
    assert cell["flops"] > 0 and cell["kernels"]["library"] > 0 and sum(cell["kernel_s"].values()) > 0
    assert cell["goal_ms"] is None  # no vs_reference.json in the folder
    assert cell["products"] > 0 and cell["products_alone_s"] > 0 and 0 < cell["products_flops"] <= cell["flops"]
    assert 0 <= cell["products_other_cpu_frac"] <= 1  # the same record as vs_reference's job gives (products_record)
    assert sum(cell["kernel_bytes"].values()) == pytest.approx(cell["bytes_accessed"], rel=0.1)
    stages = cell["first_call_stages"]
    assert cell["first_call_s"] == pytest.approx(sum(stages[f"{s}_s"] for s in vs.FIRST_CALL_STAGES))
    assert stages["compile_s"] > 0 and stages["gc_s"] >= 0
    text = (tmp_path / "step_profile.md").read_text()
    assert "| Monomial-NFN | 8 | fwdbwd |" in text and "Load average" in text
    assert "none here: no vs_reference.json" in text
    log = cell["compile_log"]  # read from XLA's timers in the cell's own process
    assert cell["program"] == "jit_gradient" and 0 < log["hlo_passes_s"] < log["compile_s"]
    assert log["modules"]["fused"]["count"] > 0 and log["modules"]["fused"]["thread_s"] > 0
    compile_table = text.split("## Where each first compile goes")[1]
    assert "| Monomial-NFN | 8 | fwdbwd | " in compile_table


@pytest.mark.parametrize("argv", [["--calls", "0"], ["--batches", "-8"], ["--jobs", "ours_sw"]])
def test_step_profile_refuses_bad_options(argv, tmp_path, capsys):
    with pytest.raises(SystemExit):
        step_profile.main(argv + ["--out", str(tmp_path)])
    assert "error" in capsys.readouterr().err and not list(tmp_path.iterdir())


LOG = """I1205 11:50:32.887164   26946 cpu_compiler.cc:1269] Running HLO passes on [jit_other] for CPU time: 812 us (812 us)
I1205 11:50:32.887203   26946 cpu_compiler.cc:2091] Compiling: jit_other
I1205 11:50:32.890678   26952 ir_compiler.cc:293] Compiled LLVM module: __compute_module_part_00 time: 9 ms (9000 us)
I1205 11:50:32.891545   26946 cpu_compiler.cc:2094] Compiling [jit_other] for CPU using JIT time: 4.34 ms (4340 us)
I1205 11:50:36.436385   26946 cpu_compiler.cc:1269] Running HLO passes on [jit_gradient] for CPU time: 235 ms (235418 us)
I1205 11:50:36.436519   26946 cpu_compiler.cc:2091] Compiling: jit_gradient
I1205 11:50:38.314403   26952 ir_compiler.cc:293] Compiled LLVM module: __compute_module_dot.244_elemental_kernel_module time: 10.1 ms (10127 us) (cumulative: 4.1 s, max: 120 ms, #called: 221)
I1205 11:50:38.408922   26952 ir_compiler.cc:293] Compiled LLVM module: __compute_module_part_27 time: 85.1 ms (85132 us)
I1205 11:50:38.453511   26953 ir_compiler.cc:293] Compiled LLVM module: __compute_module_part_14 time: 75.9 ms (75922 us)
I1205 11:50:38.463840   26953 ir_compiler.cc:293] Compiled LLVM module: __compute_module_concatenate.1_elemental_kernel_module time: 17 ms (17000 us)
I1205 11:50:38.818765   26946 cpu_compiler.cc:2094] Compiling [jit_gradient] for CPU using JIT time: 2.38 s (2382242 us)
I1205 11:50:39.887203   26946 cpu_compiler.cc:2091] Compiling: jit_gradient
I1205 11:50:39.890678   26952 ir_compiler.cc:293] Compiled LLVM module: __compute_module_part_00 time: 9 ms (9000 us)
I1205 11:50:39.891545   26946 cpu_compiler.cc:2094] Compiling [jit_gradient] for CPU using JIT time: 4.34 ms (4340 us)
"""


def test_compile_log_sorts_one_programs_first_compile_by_module_class():
    log = step_profile.compile_log(LOG, "jit_gradient")
    assert log["compile_s"] == pytest.approx(2.382242) and log["hlo_passes_s"] == pytest.approx(0.235418)
    assert log["modules"] == {"fused": {"count": 2, "thread_s": pytest.approx(0.161054)},
                              "dot": {"count": 1, "thread_s": pytest.approx(0.010127)},
                              "other": {"count": 1, "thread_s": pytest.approx(0.017)}}
    assert step_profile.compile_log(LOG, "jit_missing") is None
    assert step_profile.compile_log(LOG.split("Compiling [jit_gradient]")[0], "jit_gradient") is None  # unfinished


def test_cells_list_every_option_with_transformer_nfn_at_its_smallest_batch():
    assert step_profile.cells(["ours_tnfn", "ours_monomial"], [8, 64], ["fwd"]) == [
        ("ours_tnfn", 16, "fwd"), ("ours_tnfn", 64, "fwd"), ("ours_monomial", 8, "fwd"), ("ours_monomial", 64, "fwd")]
