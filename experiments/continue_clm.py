"""Continue causal-LM training of whatever GPT train.init_from points at (e.g. an imported
GPT-2) on a corpus, and generate from it.

python -m fmjax.tools.import_hf --hf_dir ~/models/gpt2 --workdir runs/gpt2_hf
python -m fmjax.main --config experiments/continue_clm.py --workdir runs/gpt2_adapted \
    --config.train.init_from=runs/gpt2_hf --config.data.corpus=shakespeare
python -m fmjax.main --config experiments/continue_clm.py --workdir runs/gpt2_adapted \
    --config.train.init_from=runs/gpt2_hf --mode=generate --config.generate.prompt="ROMEO:"
python -m fmjax.tools.export_hf --workdir runs/gpt2_adapted --out runs/gpt2_adapted/hf

The model's fields and its tokenizer (whose <|endoftext|> separates documents and ends
generation) come from train.init_from's workdir. Presets: "smoke".
"""

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import generate_config, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "continue_clm", smoke=False)
    config = base_config()
    config.model = ml_collections.ConfigDict(
        dict(family="gpt", fields_from_init=True, compute_dtype="auto")
    )
    config.task = ml_collections.ConfigDict(dict(name="causal_lm"))
    config.data.corpus = "shakespeare"  # shakespeare | gcide | tfds:<name>: the new domain
    config.data.source_dir = ""
    config.data.seq_len = 128  # at most the pretrained model's max_seq_len
    config.data.tokenizer_file = ""  # '' = the tokenizer of train.init_from's run
    config.train.init_from = ""  # the pretrained workdir (required)
    config.generate = generate_config()

    config.train.num_steps = 1000
    config.train.batch_size = 16
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.schedule = "cosine"
    config.train.weight_decay = 0.1
    config.train.adam_b2 = 0.99
    config.train.adam_eps = 1e-8
    config.train.log_every = 20
    config.train.eval_every = 250
    config.train.eval_batches = 8
    config.checkpoint.every_steps = 250

    if presets.smoke:  # seconds: for tests and quick checks
        config.data.seq_len = 32
        config.train.update(
            num_steps=4, batch_size=8, learning_rate=1e-3, warmup_steps=1, log_every=2,
            eval_every=4, eval_batches=1,
        )  # fmt: skip
        config.checkpoint.every_steps = 4
        config.generate.update(max_new_tokens=8)
    return config
