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

from fmjax.experiments import continued_pretraining_config, mlm_task, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "continue_mlm", smoke=False)
    # A gentle continuation: a small peak rate, so the pretrained weights are adapted, not reset.
    return continued_pretraining_config(
        "bert", mlm_task(), presets.smoke, batch_size=32, learning_rate=5e-5
    )
