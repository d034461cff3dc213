"""Fine-tune whatever BERT train.init_from points at on your own labeled texts.

python -m fmjax.tools.import_hf --hf_dir ~/models/bert-base-uncased --workdir runs/bert_base_hf
python -m fmjax.main --config experiments/classify.py --workdir runs/my_classifier \
    --config.train.init_from=runs/bert_base_hf \
    --config.data.dataset=files:$HOME/data/train.csv --config.data.test_file=$HOME/data/test.csv
python -m fmjax.tools.export_hf --workdir runs/my_classifier --out runs/my_classifier/hf

The encoder's fields (sizes, vocabulary, norms) and its tokenizer come from train.init_from's
workdir (an fmjax run or an import); the number of classes from the data (model.num_classes=0).
data.dataset: files:PATH (.csv / .tsv with a header, or .jsonl; see fmjax/data/labeled_files.py)
or a bundled set (rotten_tomatoes, wordnet_supersenses). Without data.test_file a seeded hash
split holds out data.test_fraction of the rows. Eval: accuracy, macro precision / recall / F1
and the confusion matrix over the whole held-out split. Presets: "smoke" (seconds, for tests).
"""

import ml_collections

from fmjax.experiments import parse_preset, text_classification_config, train_schedule


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "classify", smoke=False)
    model = ml_collections.ConfigDict(
        dict(
            family="bert_classifier",
            fields_from_init=True,  # every other model field: train.init_from's
            num_classes=0,  # 0: the number of distinct train labels
            pooler=True,  # BERT's dense + tanh on [CLS]: exports as BertForSequenceClassification
            classifier_dropout_rate=0.1,
            compute_dtype="auto",  # bfloat16 on GPU/TPU, float32 on CPU
        )
    )
    # The pretrained workdir, train.init_from, is required; seq_len at most its max_seq_len.
    config = text_classification_config(model, "", 128, "")
    config.data.text_field = "text"
    config.data.label_field = "label"
    config.data.text_pair_field = ""  # a second text column for sentence-pair tasks
    config.data.test_file = ""  # held-out rows (same format); '' = a hash split of the train file
    config.data.test_fraction = 0.1

    # BERT's fine-tuning recipe (Devlin et al. 2019): a few epochs at 2e-5..5e-5, base_config's
    # AdamW otherwise (warmup 100, weight decay 0.01).
    train_schedule(config, 1000, 32, eval_every=500, learning_rate=3e-5, log_every=50)

    if presets.smoke:  # seconds: for tests and quick checks
        config.data.seq_len = 32
        train_schedule(config, 6, 8, learning_rate=1e-3, warmup_steps=1, log_every=2)
    return config
