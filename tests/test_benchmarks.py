"""benchmarks/accelerator_step.py runs end to end at tiny shapes (the GPU run uses full ones)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_step_benchmark_runs_at_small_shapes(capsys):
    path = os.path.join(REPO, "benchmarks", "accelerator_step.py")
    spec = importlib.util.spec_from_file_location("accelerator_step", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    args = ["--small", "--steps", "1", "--warmup", "1", "--remat", "none", "--no-torch_compile"]
    rows = benchmark.main(args)
    table = capsys.readouterr().out
    for model in ("bert_base", "gpt2_small"):
        fmjax = [r for r in rows if r["model"] == model and r["implementation"] == "fmjax"]
        assert [r["remat"] for r in fmjax] == ["none"]
        assert {r["attention"] for r in fmjax} == {"xla"}  # the only backend a CPU runs
        assert any(r["implementation"] != "fmjax" for r in rows if r["model"] == model)
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in rows)  # CPU: no peak entry
    assert table.count("| bert_base |") == 2 and "vs peer" in table  # fmjax (remat none) + HF
