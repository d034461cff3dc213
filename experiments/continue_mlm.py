"""Continue masked-LM pretraining of whatever BERT train.init_from points at on a corpus
(domain adaptation), then fine-tune it (experiments/classify.py) or export it.

python -m fmjax.tools.import_hf --hf_dir ~/models/bert-base-uncased --workdir runs/bert_base_hf
python -m fmjax.main --config experiments/continue_mlm.py --workdir runs/bert_adapted \
    --config.train.init_from=runs/bert_base_hf --config.data.corpus=gcide
python -m fmjax.tools.export_hf --workdir runs/bert_adapted --out runs/bert_adapted/hf

The model's fields and its tokenizer (whatever its special ids) come from train.init_from's
workdir; the corpus is packed with that tokenizer, never a new one. Presets: "smoke".
"""

import ml_collections

from fmjax.config import base_config
from fmjax.experiments import parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "continue_mlm", smoke=False)
    config = base_config()
    config.model = ml_collections.ConfigDict(
        dict(family="bert", fields_from_init=True, compute_dtype="auto")
    )
    config.task = ml_collections.ConfigDict(dict(name="mlm", mask_prob=0.15, max_predictions=20))
    config.data.corpus = "shakespeare"  # shakespeare | gcide | tfds:<name>: the new domain
    config.data.source_dir = ""
    config.data.seq_len = 128  # at most the pretrained model's max_seq_len
    config.data.tokenizer_file = ""  # '' = the tokenizer of train.init_from's run
    config.train.init_from = ""  # the pretrained workdir (required)

    # A gentle continuation: a small peak rate, so the pretrained weights are adapted, not reset.
    config.train.num_steps = 1000
    config.train.batch_size = 32
    config.train.learning_rate = 5e-5
    config.train.warmup_steps = 100
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
    return config
