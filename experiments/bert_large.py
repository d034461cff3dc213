"""BERT-large masked-LM pretraining: 24 layers, hidden 1024, 16 heads, FFN 4096.

Same recipe and corpus as bert_base.py; shard it with fsdp on real hardware:
    --config.mesh.fsdp=-1 --config.mesh.data=1
"""

import ml_collections

from fmjax.experiments import bert_model, bert_pretraining_config, parse_preset


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    parse_preset(preset, "bert_large")  # none: override fields with --config.*
    # Attention dropout 0, as MosaicBERT and Cramming train on GPUs: the fused attention kernels
    # (cuDNN, splash) cannot drop attention probabilities (README, Accelerators).
    model = bert_model("large", attention_dropout_rate=0.0)
    return bert_pretraining_config(model, corpus="gcide")
