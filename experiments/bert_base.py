"""BERT-base masked-LM pretraining (Devlin et al. 2019): 12 layers, hidden 768, 12 heads.

Corpus: GCIDE (the larger Debian corpus); `--config.data.corpus=tfds:wikipedia` for users with
a prepared TFDS wikipedia. The recipe (BERT's phase 1, seq 128) is
fmjax.experiments.bert_pretraining_config. Check the sharding on a laptop first:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m fmjax.main \
        --config experiments/bert_base.py --workdir runs/bert_base --mode=compile \
        --config.mesh.fsdp=8
"""

import ml_collections

from fmjax.experiments import bert_model, bert_pretraining_config, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "bert_base")  # none: override fields with --config.*
    # Attention dropout 0, as MosaicBERT and Cramming train on GPUs: the fused attention kernels
    # (cuDNN, splash) cannot drop attention probabilities (README, Accelerators).
    model = bert_model("base", attention_dropout_rate=0.0)
    return bert_pretraining_config(model, corpus="gcide")
