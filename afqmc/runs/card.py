"""What a checkpoint says about the run that made it, beside its weights:

- `run_config.yaml`, the run's resolved config: afqmc.predict reads the dataset settings from it
  (format, columns, max_length), afqmc.evaluate nothing (it composes the run's .hydra/config.yaml);
- `README.md`, a Hugging Face model card: base checkpoint, dataset, dev metrics, the overrides the run
  was started with, and how to load the model; a checkpoint directory uploaded as it is makes a
  complete Hub repository. It is written from what the run knows: nothing is fetched.

Light on purpose (no torch): the model card is a template filled in here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from afqmc.runs.records import OVERRIDES, read_overrides
from afqmc.training.checkpoint import CARD

RUN_CONFIG = "run_config.yaml"
METRIC_NAMES = {
    "accuracy": "accuracy",
    "f1_macro": "macro-F1",
    "f1_pos": "F1 of label 1",
    "precision_pos": "precision of label 1",
    "recall_pos": "recall of label 1",
    "loss": "cross-entropy loss",
}


@dataclass
class CheckpointInfo:
    """What the trainer knows of the weights it saves."""

    config: dict  # the run's resolved config, plain containers
    overrides: list[str] = field(default_factory=list)  # the command line the run was started with
    dev: dict | None = None  # dev metrics of these very weights; None when they were not scored
    epoch: int | None = None  # where they were scored
    step: int | None = None

    def write(self, directory: Path) -> None:
        """run_config.yaml and README.md into a checkpoint directory whose model files are written."""
        shown = OmegaConf.create(without_local_paths(self.config))  # a checkpoint is shared: no local paths in it
        (directory / RUN_CONFIG).write_text(OmegaConf.to_yaml(shown), encoding="utf-8")
        (directory / CARD).write_text(model_card(self, directory), encoding="utf-8")


def run_overrides(run_dir: Path) -> list[str]:
    """The overrides Hydra recorded for the run ([] for a run started without Hydra)."""
    path = Path(run_dir) / OVERRIDES
    return read_overrides(path) if path.is_file() else []


def load_run_config(checkpoint_dir: Path) -> DictConfig | None:
    """The resolved config of the run that wrote the checkpoint (None for checkpoints written before it was saved)."""
    path = Path(checkpoint_dir) / RUN_CONFIG
    return OmegaConf.load(path) if path.is_file() else None


def _loads_with(directory: Path) -> str:
    """What loads the checkpoint: "transformers"; "custom_code", transformers with trust_remote_code=True (its
    config.json names a modeling file of its own, auto_map); or "afqmc" alone (a registered model that is not
    a transformers one: no config.json)."""
    path = directory / "config.json"
    if not path.is_file():
        return "afqmc"
    return "custom_code" if "auto_map" in json.loads(path.read_text(encoding="utf-8")) else "transformers"


def architecture(directory: Path) -> str | None:
    """What config.json says the model is: its class (RobertaForSequenceClassification), and for afqmc's
    cls/mean classifier the encoder inside (EncoderForPairwiseCLS over roberta); None without a config.json."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    name = (config.get("architectures") or [config.get("model_type")])[0]
    inner = (config.get("encoder") or {}).get("model_type") or (
        "bert" if config.get("model_type") == "afqmc_bert" else None
    )
    return f"{name} over a {inner} encoder" if inner else name


def _python_use(loads_with: str, texts: list[str], max_length: int) -> str:
    if loads_with == "afqmc":
        return f"""from afqmc.predict import Predictor

predictor = Predictor("THIS_DIR")
print(predictor([{tuple(texts)!r}]))  # [(label, probability)]"""
    text_args = ", ".join(f'["{text}"]' for text in texts)
    trust = ", trust_remote_code=True" if loads_with == "custom_code" else ""
    return f"""import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("THIS_DIR"{trust}).eval()
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR"{trust})
batch = tokenizer({text_args}, truncation=True, max_length={max_length}, return_tensors="pt")
with torch.no_grad():
    probabilities = model(**batch).logits.softmax(-1)
print(model.config.id2label[probabilities.argmax(-1).item()], probabilities.max().item())"""


def without_local_paths(tree):
    """The config with each absolute local path (`/home/me/data/bq`, `file:///...`, `~/...`) cut to its last
    name (`bq`): a checkpoint shared on the Hub tells nothing of the machine it was trained on."""
    if isinstance(tree, dict):
        return {k: without_local_paths(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [without_local_paths(v) for v in tree]
    if isinstance(tree, str) and tree.startswith(("/", "~", "file://")):
        return Path(tree.removeprefix("file://")).name or "(local)"
    return tree


# the Hub's id of a dataset that a task's name says the run trained on (dataset.task): CLUE's tasks
HUB_DATASETS = {task: "clue" for task in ("afqmc", "tnews11", "tnews10", "iflytek", "ocnli_50k", "cmnli")}


def hub_datasets(data: dict) -> list[str] | None:
    """The Hub ids of the training data, where one is known: a Hub dataset read by name (dataset.format=hf), or
    CLUE's for its tasks, unless the data are the package's own (the smoke pairs)."""
    from afqmc import ASSETS

    root = str(data.get("root") or "")
    if data.get("format") == "hf" and not Path(root).exists():
        return [root]
    if data.get("task") in HUB_DATASETS and not Path(root).resolve().is_relative_to(ASSETS):
        return [HUB_DATASETS[data["task"]]]
    return None


def base_license(checkpoint) -> str | None:
    """The license the base model's card (README.md) declares: in its directory, or in the Hugging Face cache
    for a hub name; nothing is fetched."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    if not isinstance(checkpoint, str):
        return None
    path = Path(checkpoint) / "README.md" if Path(checkpoint).is_dir() else None
    if path is None:
        try:
            cached = try_to_load_from_cache(checkpoint, "README.md")
        except ValueError:  # not a hub name either
            return None
        path = Path(cached) if isinstance(cached, str) else None
    try:
        meta = metadata_load(path) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    license_ = (meta or {}).get("license")
    return license_ if isinstance(license_, str) else None


def _metadata(info: CheckpointInfo, loads_with: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    model, task = info.config["model"], info.config["dataset"]["task"]
    datasets = hub_datasets(info.config["dataset"])
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Sentence-pair classification",
            dataset_type=datasets[0] if datasets else task,
            dataset_name=task,
            dataset_config=task if datasets else None,
            dataset_split="dev",
            metric_type="f1" if name == "f1_macro" else name,
            metric_name=METRIC_NAMES[name],
            metric_config="macro" if name == "f1_macro" else None,
            metric_value=round(value, 4),
        )
        for name, value in (info.dev or {}).items()
        if name in ("accuracy", "f1_macro")
    ]
    data = ModelCardData(
        library_name=None if loads_with == "afqmc" else "transformers",
        pipeline_tag="text-classification",
        # the Hub takes a hub name only: a local directory stays in the text below
        base_model=_hub_name(model.get("checkpoint")),
        language="zh",
        # card.license, else the base model's (its card says); none known: the key stays out
        license=(info.config.get("card") or {}).get("license") or base_license(model.get("checkpoint")),
        datasets=datasets,
        tags=["afqmc", "sentence-pair-classification", task, *(["custom_code"] if loads_with == "custom_code" else [])],
        model_name=f"{task}-{model['name']}",
        eval_results=results or None,
    )
    return data.to_yaml() + "\n"


def _hub_name(checkpoint) -> str | None:
    """The base model as the Hub takes it: a hub name, not a local directory (which stays in the text)."""
    return checkpoint if isinstance(checkpoint, str) and not Path(checkpoint).is_dir() else None


def _source(data: dict) -> str:
    """What the card says of the training data: the built-in datasets' file and columns, or just the task."""
    cols = data.get("columns")
    if not cols or "root" not in data:
        return f"`{data['task']}` (dataset `{data.get('name')}`)"
    columns = f"`{cols['text_a']}`" if cols.get("text_b") is None else f"`{cols['text_a']}` and `{cols['text_b']}`"
    return f"`{data['task']}` (`{data['root']}`, {data.get('format')}:\n{columns}, label `{cols.get('label')}`)"


def _metrics_table(info: CheckpointInfo) -> str:
    if not (info.config["dataset"].get("splits") or {}).get("dev"):
        return (
            f"The run had no dev split (`dataset.splits.dev=null`): these weights (step {info.step}) were not scored.\n"
        )
    if not info.dev:
        return (
            f"These weights (step {info.step}) were saved between two evaluations and have not been scored on dev; "
            "`checkpoints/best` of the same run holds the best scored weights.\n"
        )
    names = [n for n in METRIC_NAMES if n in info.dev]
    rows = [
        f"Scored on the dev split at epoch {info.epoch}, step {info.step}:",
        "",
        "| " + " | ".join(METRIC_NAMES[n] for n in names) + " |",
        "|" + " --- |" * len(names),
        "| " + " | ".join(f"{info.dev[n]:.4f}" for n in names) + " |",
    ]
    return "\n".join(rows) + "\n"


def model_card(info: CheckpointInfo, directory: Path) -> str:
    cfg = without_local_paths(info.config)  # (the metadata read the paths themselves, for what they hold)
    model, data = cfg["model"], cfg["dataset"]
    loads_with = _loads_with(directory)
    pooling = model.get("pooling", "cls")
    single = (data.get("columns") or {}).get("text_b", "") is None  # a single-sentence task (columns.text_b=null)
    first, second = "蚂蚁借呗等额还款可以换成先息后本吗", "借呗有先息到期还本吗"
    texts = f'"{first}"' if single else f'"{first}" "{second}"'
    base = f" from `{model['checkpoint']}`" if model.get("checkpoint") else ""
    built = architecture(directory)
    arch = f"Architecture: `{built}`; base checkpoint: `{model.get('checkpoint')}`.\n\n" if built else ""
    pooled = f", {pooling} pooling" if loads_with != "afqmc" else ""
    overrides = " ".join(info.overrides) if info.overrides else "(none: the run's defaults)"
    labels = ", ".join(f"{i}: {raw!r}" for raw, i in sorted(data["label_map"].items(), key=lambda kv: kv[1]))
    why = {
        "custom_code": f"The architecture ({pooling} pooling) is not one transformers ships: `modeling_afqmc.py` "
        "beside the weights defines it, and `config.json` names it, so it loads only with `trust_remote_code=True` "
        "(read the file first: it is short). Without it the load fails rather than build a different model.\n",
        "transformers": f"It is a plain `{architecture(directory)}`, the architecture's own classification head: "
        "it loads in transformers as it is.\n",
        "afqmc": f"`{model['name']}` is not a transformers model: afqmc loads it with the code that registered it "
        f"(the plugins {cfg.get('plugins') or []} of `run_config.yaml` must be importable).\n",
    }[loads_with]
    return f"""---
{_metadata(info, loads_with)}---

# {data["task"]}: a {"sentence" if single else "sentence-pair"} classifier

Fine-tuned with afqmc{base} on {_source(data)}. Model `{model["name"]}`{pooled}; classes {labels}.

{arch}## Dev metrics

{_metrics_table(info)}
## Training

Started with the overrides: `{overrides}`. `run_config.yaml` holds the whole resolved config: optimizer,
schedule, batch size, epochs, seed.

## Use it

{why}
```python
{_python_use(loads_with, [first] if single else [first, second], data["max_length"])}
```

(`THIS_DIR`: this directory, or its Hub repository's name.) With afqmc, which reads any file format
the training did, with this run's columns, and prints metrics when the file has labels:

```bash
python -m afqmc.predict THIS_DIR {texts}
python -m afqmc.predict THIS_DIR --file pairs.jsonl --output predictions.jsonl
```
"""
