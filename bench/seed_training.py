"""The seed's reward-model training and sampling loop (KoChatGPT notebooks), re-created as plain reference code.

Nothing here is used by kochat; it is the baseline bench/run_all.py measures against,
written the way the seed wrote it: fixed padding, two forwards, a Python loop per token.
"""

from __future__ import annotations

import torch
from torch import nn


class RewardDataset(torch.utils.data.Dataset):
    """Each side of each pair tokenised alone, padded to `max_length` (512 in the seed)."""

    def __init__(self, pairs: list[dict], tokenizer, max_length: int = 512):
        self.chosen, self.rejected = [], []
        for pair in pairs:
            for text, side in ((pair["prompt"] + pair["chosen"], self.chosen), (pair["prompt"] + pair["rejected"], self.rejected)):
                side.append(tokenizer(text + tokenizer.eos_token, max_length=max_length, padding="max_length",
                                      truncation=True, return_tensors="pt"))

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int):
        chosen, rejected = self.chosen[index], self.rejected[index]
        return chosen["input_ids"][0], chosen["attention_mask"][0], rejected["input_ids"][0], rejected["attention_mask"][0]


class MeanValueRewardModel(nn.Module):
    """The seed's reward: a value head on every position, averaged over the sequence, padding included."""

    def __init__(self, backbone: nn.Module, width: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(width, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask=attention_mask).last_hidden_state
        return self.value_head(hidden)[:, :-1].mean(dim=1).squeeze(1)


def train_rm(model: MeanValueRewardModel, dataset: RewardDataset, batch_size: int, learning_rate: float, seed: int = 42) -> None:
    """One epoch: chosen and rejected in two forwards, −log σ(chosen − rejected)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for chosen_ids, chosen_mask, rejected_ids, rejected_mask in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True):
        chosen = model(chosen_ids, chosen_mask)
        rejected = model(rejected_ids, rejected_mask)
        loss = -torch.log(torch.sigmoid(chosen - rejected)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def sample(model: nn.Module, tokenizer, prompts: list[str], new_tokens: int, top_k: int, max_length: int = 96) -> torch.Tensor:
    """The seed's generate: prompts right-padded together, then one full forward per new token
    (no KV cache, no attention mask), top-k sampling, tokens appended after the padding."""
    input_ids = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)["input_ids"]
    unfinished = input_ids.new_ones(input_ids.shape[0])
    for _ in range(new_tokens):
        logits = model(input_ids)["logits"][:, -1, :]
        threshold = torch.topk(logits, top_k)[0][..., -1, None]
        logits = logits.masked_fill(logits < threshold, -float("inf"))
        next_tokens = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)
        next_tokens = next_tokens * unfinished + tokenizer.pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished = unfinished * (next_tokens != tokenizer.eos_token_id).long()
    return input_ids
