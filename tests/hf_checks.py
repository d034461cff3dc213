"""What the HF exchange tests share: an HF model with random weights."""


def randomize(hf_model):
    """`hf_model` with every parameter drawn from N(0, 0.1) (seed 0), in eval mode: trained-like
    weights, so a wrong map between fmjax and HF names changes the logits."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.normal_(0.0, 0.1)
    return hf_model.eval()
