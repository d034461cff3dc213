"""fmjax BERT equals HF transformers BertForMaskedLM with the same weights (PyTorch CPU)."""

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax.experiments import experiment_config  # noqa: E402
from fmjax.models import build_model  # noqa: E402
from fmjax.tools.export_hf import hf_config  # noqa: E402
from fmjax.tools.hf_weights import bert_to_hf  # noqa: E402


def hf_state_dict(params: dict, num_layers: int) -> dict:
    """fmjax BERT params (pure dict) -> HF BertForMaskedLM state dict (the export tool's map)."""
    return {k: torch.from_numpy(v) for k, v in bert_to_hf(params, num_layers).items()}


def test_logits_match_transformers():
    config = experiment_config("bert_tiny", "smoke")
    model_config = config.model
    model_config.update(compute_dtype="float32", vocab_size=300, max_seq_len=32)
    with nnx.use_eager_sharding(False):
        model = build_model(model_config, nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    hf_model = transformers.BertForMaskedLM(
        hf_config(model_config, model_config.vocab_size)  # the export tool's BertConfig
    ).eval()
    missing, unexpected = hf_model.load_state_dict(
        hf_state_dict(params, model_config.num_layers), strict=False
    )
    assert not unexpected and set(missing) <= {
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
        "bert.embeddings.position_ids",
    }
    hf_model.tie_weights()

    rng = np.random.default_rng(0)
    input_ids = rng.integers(5, model_config.vocab_size, size=(2, 16)).astype(np.int32)
    types = rng.integers(0, 2, size=(2, 16)).astype(np.int32)
    attention_mask = np.ones((2, 16), np.int32)
    attention_mask[1, 11:] = 0
    positions = np.array([[0, 5, 15], [1, 4, 10]], np.int32)
    ours = model(input_ids, types, attention_mask, positions, deterministic=True)
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.from_numpy(input_ids.astype(np.int64)),
            token_type_ids=torch.from_numpy(types.astype(np.int64)),
            attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
        ).logits.numpy()
    expected = np.take_along_axis(theirs, positions[:, :, None], axis=1)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)
