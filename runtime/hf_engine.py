"""HF transformers + PEFT generation: the adapter on its base, greedy, left-padded batches, finished as vLLM
finishes them (up to and including the first end token; "stop" or "length"). The reference the vLLM engines
are compared with (`evaluate bench`'s hf configurations); torch, transformers and peft are imported on use."""
from __future__ import annotations

from typing import Any


def eos_ids(model, tok) -> set[int]:
    """Every id that ends a turn: the generation config's (Gemma 3: <eos> and <end_of_turn>) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    out = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        out.add(tok.eos_token_id)
    return out


def finish(gen: list[int], eos: set[int], max_tokens: int) -> tuple[list[int], str]:
    """The generated ids up to and including the first end token (as vLLM counts them), and why it ended."""
    gen = gen[:max_tokens]
    for i, t in enumerate(gen):
        if t in eos:
            return gen[:i + 1], "stop"
    return gen, "length"


class HfPeft:
    """A base model with a PEFT adapter (None: the base alone), in eval mode, for greedy generation."""

    def __init__(self, model: str, adapter: str | None, dtype: str = "auto", threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(model)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")
        if adapter is not None:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, adapter)
        self.model = base.eval()
        self.eos = eos_ids(self.model, self.tok)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.eos))

    def generate_ids(self, batch: list[list[int]], max_new: int, processors: Any = None) -> list[list[int]]:
        """Greedy continuations of prompt ids, left-padded into one batch; the new ids only (not finished)."""
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[self.pad] * (width - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        with torch.inference_mode():
            gen = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                      pad_token_id=self.pad, logits_processor=processors)
        return gen[:, width:].tolist()

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
