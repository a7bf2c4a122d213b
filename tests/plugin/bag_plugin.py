"""A user's plugin, as the README's "Adding a component" has one write it: a model that is not a transformers
model (a bag of token embeddings and a linear head), a dataset that is not one of afqmc's (one JSON document a
split, {"pairs": [[text_a, text_b, label], ...]}) with its own collate function, and a callback. The contract
test (tests/test_contract.py) copies it into a user's directory and names it with `plugins=[bag_plugin]`."""

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoTokenizer

from afqmc.config.registry import CALLBACKS, COLLATORS, DATASETS, MODELS
from afqmc.config.schema import Key
from afqmc.files import sha256
from afqmc.training.callbacks import Callback

WEIGHTS = "bag.pt"


class BagOfTokens(nn.Module):
    def __init__(self, vocab: int, labels: int, dim: int, pad: int):
        super().__init__()
        self.sizes = {"vocab": vocab, "labels": labels, "dim": dim, "pad": pad}
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=pad)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.head(self.dropout(self.bag(input_ids)))  # the logits: the trainer computes the loss


def save_bag(model: BagOfTokens, directory: Path) -> None:
    (directory / "sizes.json").write_text(json.dumps(model.sizes))
    torch.save(model.state_dict(), directory / WEIGHTS)


def load_bag(directory: Path) -> BagOfTokens:
    model = BagOfTokens(**json.loads((directory / "sizes.json").read_text()))
    model.load_state_dict(torch.load(directory / WEIGHTS, weights_only=True))
    return model


@MODELS.register("bag", schema={"tokenizer": Key(str), "dim": Key(int, min=1)}, save=save_bag, load=load_bag)
def build_bag(cfg, label_names):
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    return BagOfTokens(len(tokenizer), len(label_names), cfg.dim, tokenizer.pad_token_id), tokenizer


class JsonPairs(Dataset):
    streaming, skipped_lines, no_gold_label = False, 0, 0

    def __init__(self, path: Path, label_map: dict, labeled: bool):
        self.path = path
        self.pairs = json.loads(path.read_text(encoding="utf-8"))["pairs"]
        self.labels = [label_map[str(p[2])] if labeled else None for p in self.pairs]
        self.encoded = None

    def count(self) -> int:
        return len(self.pairs)

    def encode(self, tokenizer, max_length: int) -> None:
        self.encoded = [tokenizer(a, b, truncation=True, max_length=max_length)["input_ids"] for a, b, _ in self.pairs]

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.encoded]

    def item_id(self, index: int):
        return f"pair-{index}"

    def fingerprint(self) -> dict:
        return {"file": str(self.path), "examples": self.count(), "sha256": sha256(self.path)}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "input_ids": self.encoded[i], "label": self.labels[i]}


@DATASETS.register(
    "json_pairs",
    schema={
        "task": Key(str),
        "root": Key(str),
        "splits": Key(dict, keys={"train": Key(str), "dev": Key(str, null=True), "test": Key(str, null=True)}),
        "label_map": Key(dict),
        "max_length": Key(int, min=2),
        "collate": Key(str),
    },
)
def build_json_pairs(cfg, split, labeled=None):
    labeled = split != "test" if labeled is None else labeled
    return JsonPairs(Path(cfg.root) / cfg.splits[split], dict(cfg.label_map), labeled)


@COLLATORS.register("pad_ids")
def build_pad_ids(cfg, tokenizer, pad_to_multiple_of=None):
    def collate(items):
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), tokenizer.pad_token_id)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
        batch = {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long()}
        batch["index"] = torch.tensor([item["index"] for item in items])
        if items[0]["label"] is not None:
            batch["labels"] = torch.tensor([item["label"] for item in items])
        return batch

    return collate


class CountEvents(Callback):
    """Writes, on rank 0, one line per event it hears into `file`."""

    def __init__(self, file: str):
        self.file = Path(file)

    def _note(self, trainer, text: str) -> None:
        if trainer is None or trainer.is_main:
            with open(self.file, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    def on_train_step(self, trainer, record):
        self._note(trainer, f"step {record['step']}")

    def on_evaluate(self, trainer, record, gain):
        self._note(trainer, f"evaluate {record['step']} {'best' if gain > 0 else 'no gain'}")

    def on_save(self, trainer, which, path):
        self._note(trainer, f"save {which} {Path(path).is_dir()}")

    def on_end(self, trainer, summary):
        self._note(trainer, f"end {summary['status']}")

    def on_stop(self, trainer, status):
        self._note(trainer, f"stop {status}")


@CALLBACKS.register("count_events", schema={"file": Key(str)})
def build_count_events(cfg):
    return CountEvents(cfg.file)
