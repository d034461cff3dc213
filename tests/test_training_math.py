"""Training math that must match the reference recipes: init, weight decay, logit-scale clamp,
throughput windows, the logged learning rate, generation stops and the progress bar."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models import build_model
from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import shard_batch
from fmjax.tasks import build_task
from fmjax.train import trainer
from fmjax.train.generate import generate_ids
from fmjax.train.optim import _decay_mask, learning_rate_schedule
from fmjax.train.run import Run
from fmjax.train.step import build_program


def experiment(name: str, preset: str | None = "smoke"):
    return experiment_config(name.removesuffix(".py"), preset)


def build(model_config, seed: int = 0) -> nnx.Module:
    with nnx.use_eager_sharding(False):
        return build_model(model_config, nnx.Rngs(seed))


def leaves_by_path(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("scan_layers", [False, True])
def test_gpt_residual_projections_are_scaled_by_depth(scan_layers):
    config = experiment("gpt_tiny.py", None).model
    config.update(num_layers=8, scan_layers=scan_layers, compute_dtype="float32")
    params = leaves_by_path(nnx.to_pure_dict(nnx.state(build(config), nnx.Param)))
    residual = 0.02 / np.sqrt(2 * 8)
    stds = {"out": [], "wo": [], "wi": [], "query": []}
    for path, value in params.items():
        for name in stds:
            if f"/{name}/kernel" in path:
                stds[name].append(float(np.std(value)))
    assert all(stds.values())
    np.testing.assert_allclose(stds["out"], residual, rtol=0.1)
    np.testing.assert_allclose(stds["wo"], residual, rtol=0.1)
    np.testing.assert_allclose(stds["wi"] + stds["query"], 0.02, rtol=0.1)


def test_vit_kernels_are_xavier_uniform_and_bert_kernels_normal():
    """vit_tiny's attention and MLP kernels: big_vision's Xavier-uniform, std sqrt(2 / (fan_in +
    fan_out)); bert_tiny's stay N(0, 0.02); an unknown name fails at start naming the field."""
    vit = experiment("vit_tiny.py", None).model
    assert vit.kernel_init == "xavier_uniform"
    vit.compute_dtype = "float32"
    params = leaves_by_path(nnx.to_pure_dict(nnx.state(build(vit), nnx.Param)))
    d, mlp = vit.embed_dim, vit.mlp_dim
    expected = {"query": np.sqrt(2 / (2 * d)), "wi": np.sqrt(2 / (d + mlp))}
    for name, std in expected.items():
        kernels = [v for path, v in params.items() if f"/{name}/kernel" in path]
        assert len(kernels) == vit.num_layers
        np.testing.assert_allclose([np.std(k) for k in kernels], std, rtol=0.1)
        limit = np.sqrt(3) * std  # uniform on [-limit, limit]
        assert all(np.abs(k).max() <= limit * (1 + 1e-6) for k in kernels)
    bert_config = experiment("bert_tiny.py", None).model
    bert_config.compute_dtype = "float32"
    bert = leaves_by_path(nnx.to_pure_dict(nnx.state(build(bert_config), nnx.Param)))
    wi = [v for path, v in bert.items() if "/wi/kernel" in path]
    np.testing.assert_allclose([np.std(k) for k in wi], 0.02, rtol=0.1)
    vit.kernel_init = "glorot"
    with pytest.raises(ConfigError, match="kernel_init must be one of"):
        build(vit)


@pytest.mark.parametrize("name", ["bert_tiny.py", "gpt_tiny.py"])
def test_no_weight_decay_on_biases_and_layer_norms(name):
    config = experiment(name).model
    config.compute_dtype = "float32"
    params = nnx.to_pure_dict(nnx.state(build(config), nnx.Param))
    decayed = leaves_by_path(_decay_mask(params))
    assert decayed["mlm_bias"] is False if name == "bert_tiny.py" else "lm_head" not in decayed
    for path, is_decayed in decayed.items():
        # decayed: the weight matrices alone; never a bias (per-head ones are 2-D) or a norm
        assert is_decayed == (path.split("/")[-1] in ("kernel", "embedding")), path


def test_clip_logit_scale_is_clamped_at_100():
    config = experiment("contrastive_tiny.py").model
    config.compute_dtype = "float32"
    model = build(config)
    model.logit.scale[...] = jnp.float32(np.log(1000.0))
    scale, _ = model.logit_scale_and_bias()
    assert float(scale) == pytest.approx(100.0)
    model.logit.scale[...] = jnp.float32(np.log(20.0))
    assert float(model.logit_scale_and_bias()[0]) == pytest.approx(20.0)


def test_logged_learning_rate_is_the_applied_one_after_a_skipped_step():
    config = experiment("bert_tiny.py")
    config.model.compute_dtype = "float32"
    config.train.update(warmup_steps=0, schedule="linear", num_steps=10, learning_rate=1e-3)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    task = build_task(config)
    spec = task.batch_spec(4)
    rng = np.random.default_rng(0)
    batch = {name: np.ones(s.shape, s.dtype) for name, s in spec.items()}  # weights, mask = 1
    batch.update(
        input_ids=rng.integers(5, 50, spec["input_ids"].shape).astype(np.int32),
        token_type_ids=np.zeros(spec["token_type_ids"].shape, np.int32),
        masked_positions=rng.integers(0, 16, spec["masked_positions"].shape).astype(np.int32),
        masked_ids=rng.integers(5, 50, spec["masked_ids"].shape).astype(np.int32),
    )
    poisoned = dict(batch, masked_weights=np.full(spec["masked_weights"].shape, np.nan, np.float32))
    schedule = learning_rate_schedule(config.train)
    rules = tuple(tuple(r) for r in config.sharding.logical_axis_rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        program = build_program(config, task, mesh)
        state = program.init_state()
        logged = []
        for b in (batch, poisoned, batch):
            state, metrics = program.train_step(state, shard_batch(b, mesh))
            logged.append(jax.device_get(metrics))
    assert [float(m["nonfinite"][0]) for m in logged] == [0.0, 1.0, 0.0], logged
    assert float(logged[1]["learning_rate"][1]) == 0.0  # the skipped step applied no rate
    # the third update is the optimizer's second: schedule(1), not schedule(2) of the step count
    assert float(logged[2]["learning_rate"][0]) == pytest.approx(float(schedule(1)))
    assert float(schedule(1)) != pytest.approx(float(schedule(2)))


def test_generation_stops_each_sequence_at_its_end_token():
    config = experiment("gpt_tiny.py", None).model
    config.update(
        vocab_size=61, embed_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
        max_seq_len=32, compute_dtype="float32",
    )  # fmt: skip
    graphdef, params = nnx.split(build(config))
    prompts = [[5, 9, 3, 17], [8], [40, 2]]
    free = generate_ids(graphdef, params, prompts, max_new_tokens=8, end_id=None)
    # the token the first row emits third: as end token it ends that row there
    end = int(free[0, 2])
    stopped = generate_ids(graphdef, params, prompts, max_new_tokens=8, end_id=end)
    for row_free, row_stopped in zip(free, stopped, strict=True):
        hits = np.flatnonzero(row_free == end)
        cut = hits[0] + 1 if len(hits) else len(row_free)
        np.testing.assert_array_equal(row_stopped[:cut], row_free[:cut])
        assert (row_stopped[cut:] == end).all()
    assert (stopped[0, 3:] == end).all()


class _FakeClock:
    """time.perf_counter for the trainer: train steps take 1 s, eval 1000 s, saves 500 s."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_throughput_excludes_eval_and_checkpoints_and_the_bar_counts_finished_steps(
    shared_data_dir, tmp_path, monkeypatch
):
    config = experiment("bert_tiny.py")
    config.data.data_dir = shared_data_dir
    config.train.update(num_steps=8, log_every=2, eval_every=3)
    config.checkpoint.update(every_steps=3, async_save=False)
    clock = _FakeClock()
    monkeypatch.setattr(trainer, "time", clock)
    dispatched, bar_positions = [0], []
    compile_train_step = Run.compile_train_step
    evaluate = Run.evaluate
    save = trainer.Checkpointer.save

    def compiled(run):
        step = compile_train_step(run)

        def timed(*args):
            clock.now += 1.0
            dispatched[0] += 1
            return step(*args)

        return timed

    def slow(method, seconds):
        def wrapper(*args, **kwargs):
            clock.now += seconds
            return method(*args, **kwargs)

        return wrapper

    class RecordingBar(trainer.tqdm):
        def update(self, n=1):
            super().update(n)
            bar_positions.append((self.n, dispatched[0]))

    monkeypatch.setattr(Run, "compile_train_step", compiled)
    monkeypatch.setattr(Run, "evaluate", slow(evaluate, 1000.0))
    monkeypatch.setattr(trainer.Checkpointer, "save", slow(save, 500.0))
    monkeypatch.setattr(trainer, "tqdm", RecordingBar)
    trainer.train(config, str(tmp_path / "run"))
    with open(os.path.join(tmp_path / "run", "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 4, 6, 8]
    assert all(r["steps_per_s"] == pytest.approx(1.0) for r in train), train
    # between logs the bar trails the dispatched steps: it moves once a step has finished
    assert bar_positions[-1][0] == 8
    assert any(n == d - 1 for n, d in bar_positions)
    assert all(n <= d for n, d in bar_positions)
