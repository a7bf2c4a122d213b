"""The loops we measure ourselves against, on the same model class (BertForPairwiseCLS) and data.

With pooling "auto" they train AutoModelForSequenceClassification instead (the architecture's own head,
what run_glue builds), as this framework's model.pooling=auto does: any architecture that has one.

- hf_trainer: transformers.Trainer, either as run_glue does by default (every pair padded to
  max_length) or with dynamic padding + train_sampling_strategy="group_by_length".
- classic_loop: the hand-written notebook loop (random batches, tokenized and padded per batch).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup, set_seed

from afqmc.models.modeling import BertForPairwiseCLS
from afqmc.training.metrics import classification_metrics


def load_pairs(data_dir: str, split: str, limit: int | None = None) -> list[dict]:
    with open(Path(data_dir) / f"{split}.json", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit]


def load_model(model_dir: str, pooling: str, pretrained: bool, device: str):
    if pooling == "auto":
        from transformers import AutoConfig, AutoModelForSequenceClassification

        if pretrained:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        else:
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir, num_labels=2))
        return model.to(device), AutoTokenizer.from_pretrained(model_dir)
    if pretrained:
        model = BertForPairwiseCLS.from_pretrained(model_dir, num_labels=2)
    else:
        from transformers import AutoConfig

        model = BertForPairwiseCLS(AutoConfig.from_pretrained(model_dir, num_labels=2))
    model.pooling = pooling
    kwargs = {"do_lower_case": True}  # bert-base-chinese's vocabulary is lower-case; e5's tokenizer ignores it
    return model.to(device), AutoTokenizer.from_pretrained(model_dir, **kwargs)


def hf_trainer(args, out_dir: str, pad_to_max: bool) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    set_seed(args.seed)
    model, tok = load_model(args.model, args.pooling, args.pretrained, args.device)
    padding = "max_length" if pad_to_max else False

    def encode(rows):
        enc = tok(
            [r["sentence1"] for r in rows],
            [r["sentence2"] for r in rows],
            truncation=True,
            max_length=args.max_length,
            padding=padding,
        )
        return [{**{k: v[i] for k, v in enc.items()}, "labels": int(rows[i]["label"])} for i in range(len(rows))]

    train = encode(load_pairs(args.data, "train", args.samples))
    training_args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=args.seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        torch_compile=args.compile,  # as --compile does in this framework
        disable_tqdm=True,
        train_sampling_strategy="random" if pad_to_max else "group_by_length",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tok, pad_to_multiple_of=8 if args.device != "cpu" else None),
    )
    start = time.perf_counter()
    trainer.train()
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"samples": len(train) * args.epochs, "seconds": seconds}
    if args.eval:
        pred = trainer.predict(encode(load_pairs(args.data, "dev", getattr(args, "dev", None))))
        preds, labels = torch.tensor(pred.predictions).argmax(-1), torch.tensor(pred.label_ids)
        result["dev"] = classification_metrics(preds, labels, 2)
    return result


def classic_loop(args) -> dict:
    set_seed(args.seed)
    model, tok = load_model(args.model, args.pooling, args.pretrained, args.device)
    rows = load_pairs(args.data, "train", args.samples)
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=lambda b: (
            tok(
                [r["sentence1"] for r in b],
                [r["sentence2"] for r in b],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            ),
            torch.tensor([int(r["label"]) for r in b]),
        ),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = len(loader) * args.epochs
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.1 * steps), steps)
    model.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch, labels in loader:
            loss = model(**batch.to(args.device), labels=labels.to(args.device)).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    if args.device != "cpu":
        torch.cuda.synchronize()
    return {"samples": len(rows) * args.epochs, "seconds": time.perf_counter() - start}
