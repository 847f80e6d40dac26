"""The output layer and the loss only where there are labels.

A causal LM's output layer maps every position's hidden state to the whole vocabulary, but training
only scores the positions whose next token has a label: the answer (about 65 of 330 tokens a demo
record), never the prompt. On Gemma 3 the output layer is 262,144 x hidden (on the 270M model 62% of
the parameters), so computing it at every position costs most of a training step on CPU and, on a
GPU, the memory of a [batch, sequence, 262,144] float tensor (for the users' gemma-3-4b-it: 1k tokens
x 262,144 x 4 bytes = 1 GiB of fp32 logits for one sample, and as much again for their gradient).

``labelled_head`` narrows the output layer's input to those positions (a forward pre-hook on the
model's output embedding, for one forward call), and ``shift_labels`` gives transformers' causal-LM
loss the matching targets: the loss is the same cross-entropy over the same (position, token) pairs,
summed in another order, so the loss and the gradients equal the plain path's (tested to 1e-5). It
works for every model whose forward applies ``get_output_embeddings()`` to its last hidden states and
passes ``shift_labels`` to ``ForCausalLMLoss`` (transformers >= 4.50: Gemma 3, Llama, Qwen, ...).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

IGNORE_INDEX = -100


def labelled_positions(labels):
    """A [batch, seq] bool mask: the positions whose next token has a label (position t predicts t+1)."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _unwrapped(model):
    """The model inside torch's data-parallel wrappers (`torchrun` / `accelerate launch` wrap it in
    DistributedDataParallel, which does not forward ``get_output_embeddings``)."""
    from torch.nn import DataParallel
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return model


@contextmanager
def labelled_head(model, labels) -> Iterator[dict[str, Any]]:
    """Within the block, the model's output layer sees only the labelled positions of ``labels``' batch
    (as one row of N positions); yields the extra forward kwargs (``shift_labels``, [1, N]) that make
    the model's own loss score exactly those positions."""
    keep = labelled_positions(labels)
    head = _unwrapped(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to narrow")

    def narrow(module, args):
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"output layer input {tuple(hidden.shape)} does not match the labels {tuple(keep.shape)}")
        return (hidden[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(narrow)
    try:
        yield {"shift_labels": labels[:, 1:][keep[:, :-1]].unsqueeze(0)}
    finally:
        handle.remove()


def trainer_class(labelled_only: bool):
    """transformers' Trainer, or a subclass whose loss (training and eval) runs through ``labelled_head``."""
    from transformers import Trainer

    if not labelled_only:
        return Trainer

    class LabelledLogitsTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if labels is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with labelled_head(model, labels) as extra:
                return super().compute_loss(model, {**inputs, **extra}, return_outputs, num_items_in_batch)

    return LabelledLogitsTrainer
