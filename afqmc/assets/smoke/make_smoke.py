"""Regenerate the smoke data set and tiny-bert vocabulary shipped with the package.

    python afqmc/assets/smoke/make_smoke.py

Hand-written AFQMC-style questions: each (product, intent) has a few phrasings. Two phrasings of
the same product and intent are a paraphrase (label "1"); a different intent or product is not
("0"). The task is learnable from character overlap, so a tiny random BERT gets above chance in
seconds, which is what the smoke experiment and the tests need.
"""

import json
import random
from pathlib import Path

PRODUCTS = ["借呗", "花呗", "余额宝", "信用卡", "网商贷", "支付宝"]
INTENTS = {
    "repay": ["{p}怎么还款", "{p}在哪里还钱", "如何还{p}的钱", "{p}还款方式是什么"],
    "limit": ["{p}额度怎么提升", "怎样提高{p}的额度", "{p}额度太低了能提吗", "{p}怎么涨额度"],
    "open": ["{p}怎么开通", "为什么开通不了{p}", "我想开通{p}", "{p}开通条件是什么"],
    "close": ["{p}怎么关闭", "如何注销{p}", "我不想用{p}了怎么关掉", "{p}可以取消吗"],
    "overdue": ["{p}逾期了怎么办", "{p}晚还一天有影响吗", "{p}逾期会上征信吗", "{p}过了还款日会怎样"],
}


def pairs(rng: random.Random, n: int) -> list[dict]:
    rows = []
    keys = [(p, i) for p in PRODUCTS for i in INTENTS]
    for _ in range(n):
        p, i = rng.choice(keys)
        a, b = rng.sample(INTENTS[i], 2)
        if rng.random() < 0.5:
            rows.append((a.format(p=p), b.format(p=p), "1"))
            continue
        if rng.random() < 0.5:  # same product, other intent
            q = p
            j = rng.choice([k for k in INTENTS if k != i])
        else:  # same intent, other product
            q = rng.choice([x for x in PRODUCTS if x != p])
            j = i
        rows.append((a.format(p=p), rng.choice(INTENTS[j]).format(p=q), "0"))
    return [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in rows]


def main() -> None:
    here = Path(__file__).parent
    rng = random.Random(0)
    splits = {"train": pairs(rng, 800), "dev": pairs(rng, 100), "test": pairs(rng, 50)}
    for row_id, row in enumerate(splits["test"]):
        del row["label"]
        splits["test"][row_id] = {"id": row_id, **row}
    for name, rows in splits.items():
        with open(here / f"{name}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    chars = sorted({c for rows in splits.values() for r in rows for c in r["sentence1"] + r["sentence2"]})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tiny = here.parent / "tiny-bert"  # a random BERT small enough to train in seconds on a CPU
    tiny.mkdir(exist_ok=True)
    (tiny / "vocab.txt").write_text("\n".join(special + chars) + "\n", encoding="utf-8")
    (tiny / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}) + "\n"
    )
    config = {
        "model_type": "bert",
        "vocab_size": len(special) + len(chars),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    (tiny / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
