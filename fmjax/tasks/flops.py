"""Model FLOPs of a Transformer stack, the one formula every task's MFU is built from.

Convention (PaLM / MaxText MFU): 2 FLOPs per multiply-add, matmuls only (embedding lookups,
norms, softmax, the loss and the optimizer are ignored), and training = 3 x forward
(the backward pass costs two forwards). Causal masks are not discounted: dense attention computes
all T x T scores.
"""

from __future__ import annotations

from typing import Any

TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (gradients of activations and of weights)


def transformer_forward_flops(stack: Any, num_tokens: int) -> float:
    """Forward FLOPs of `stack` (embed_dim d, num_heads h, head_dim k, mlp_dim f, num_layers)
    over one example of T = num_tokens tokens:

        T * num_layers * [2 * (4 * d * h * k + 2 * d * f)   q, k, v, out projections; MLP
                          + 2 * 2 * T * h * k]               Q·Kᵀ and probs·V
    """
    d, h, k, f = stack.embed_dim, stack.num_heads, stack.head_dim, stack.mlp_dim
    per_token_layer = 2 * (4 * d * h * k + 2 * d * f) + 4 * num_tokens * h * k
    return float(num_tokens * stack.num_layers * per_token_layer)
