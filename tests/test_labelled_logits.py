"""The output layer and loss only at labelled positions (train/labelled_logits.py): the same loss and
gradients as the plain path, on the real Gemma 3 270M with a LoRA adapter and a right-padded batch
(issue 15)."""
from __future__ import annotations

import pytest
import torch

from patent_risk.train.labelled_logits import labelled_head, labelled_positions, trainer_class


@pytest.fixture(scope="module")
def lora_gemma(gemma_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(gemma_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    return model.train()


@pytest.fixture(scope="module")
def batch(gemma_tokenizer, eval_records):
    from patent_risk.train.features import build_features, make_collator

    b = make_collator(gemma_tokenizer)([build_features(gemma_tokenizer, r).as_dict() for r in eval_records[:2]])
    assert (b["attention_mask"] == 0).any()  # right padding is part of what is compared
    return b


def _loss_and_grads(model, batch, labelled: bool, **kw):
    model.zero_grad()
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        if labelled:
            with labelled_head(model, batch["labels"]) as extra:
                out = model(**batch, **extra, **kw)
        else:
            out = model(**batch, **kw)
    finally:
        hook.remove()
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.item(), grads, seen


@pytest.mark.parametrize("num_items", [None, 97])
def test_loss_and_gradients_equal_the_full_logits_path(lora_gemma, batch, num_items):
    """Mean loss (num_items None) and the Trainer's summed loss over num_items_in_batch alike."""
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    full_loss, full_grads, full_shapes = _loss_and_grads(lora_gemma, batch, False, **kw)
    loss, grads, shapes = _loss_and_grads(lora_gemma, batch, True, **kw)
    n = int(labelled_positions(batch["labels"]).sum())
    vocab = lora_gemma.get_output_embeddings().out_features
    assert full_shapes == [(*batch["input_ids"].shape, vocab)]
    assert shapes == [(1, n, vocab)]  # the head ran at the labelled positions only
    assert n == int((batch["labels"][:, 1:] != -100).sum()) and n < batch["input_ids"].numel() / 3
    assert loss == pytest.approx(full_loss, abs=1e-5)
    assert grads.keys() == full_grads.keys() and len(grads) == 18 * 4 * 2
    worst = max((grads[k] - full_grads[k]).abs().max().item() for k in grads)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3  # gradients that say something


def test_the_trainer_subclass_gives_the_plain_trainers_loss(lora_gemma, batch, tmp_path):
    """compute_loss of the subclass (training and eval alike) against transformers' own Trainer."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    losses = {}
    for labelled in (False, True):
        trainer = trainer_class(labelled)(model=lora_gemma, args=args)
        with torch.no_grad():
            losses[labelled] = trainer.compute_loss(lora_gemma, dict(batch), num_items_in_batch=torch.tensor(131)).item()
    assert trainer_class(True) is not trainer_class(False)
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_positions_follow_the_next_tokens_label():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    assert labelled_positions(labels).tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
