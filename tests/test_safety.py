"""Safety: weights as safetensors, no pickle loading, no remote code unless asked for, files stay in the run."""

import ast
import json
from pathlib import Path

import pytest

import afqmc
from afqmc.errors import ModelLoadError
from afqmc.models.components import build_pair_cls as build_model
from afqmc.training import checkpoint

from .conftest import compose_cfg
from .test_model import model_cfg


def test_checkpoints_are_safetensors_only(tiny_bert_dir, tmp_path):
    """safetensors holds tensors only: loading it cannot run code, as a pickled .bin can."""
    model, tokenizer = build_model(model_cfg(tiny_bert_dir), ["0", "1"])
    checkpoint.save(tmp_path / "best", "bert_pair_cls", model, tokenizer)  # the trainer's own save
    files = {p.name for p in (tmp_path / "best").iterdir()}
    (tmp_path / "plain").write_text("")  # every file as readable as any other the run writes (umask's)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "best").iterdir()} == {
        (tmp_path / "plain").stat().st_mode & 0o777
    }
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], files


def unsafe_torch_loads(source: str) -> list[int]:
    """Line numbers of torch.load calls without weights_only=True (which refuses to unpickle code)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
        and not any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
    ]


def test_scanner_finds_unsafe_torch_load():
    assert unsafe_torch_loads(
        "import torch\ntorch.load(p)\ntorch.load(p, weights_only=True)\ntorch.load(p, weights_only=False)\n"
    ) == [2, 4]


def test_package_never_unpickles():
    root = Path(afqmc.__file__).parent
    sources = sorted(root.rglob("*.py")) + [root.parent / "run.py"]
    unsafe = {str(p): lines for p in sources if (lines := unsafe_torch_loads(p.read_text(encoding="utf-8")))}
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


@pytest.fixture
def custom_code_checkpoint(tmp_path):
    """A checkpoint whose config names its own Python module, which leaves a mark when it runs."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "sneaky",
                "max_position_embeddings": 512,
                "auto_map": {"AutoConfig": "configuration_sneaky.SneakyConfig"},
            }
        )
    )
    (tmp_path / "configuration_sneaky.py").write_text(
        f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class SneakyConfig(PretrainedConfig):\n    model_type = 'sneaky'\n"
    )
    return tmp_path


def test_remote_code_is_refused_by_default(custom_code_checkpoint):
    assert compose_cfg().model.trust_remote_code is False
    with pytest.raises(
        ModelLoadError,
        match=r"model.checkpoint='.*' needs its own Python code to load, which runs only "
        r"with model.trust_remote_code=true",
    ):
        build_model(model_cfg(custom_code_checkpoint), ["0", "1"])
    assert not (custom_code_checkpoint / "RAN").exists()


@pytest.mark.parametrize("name", ["bert_pair_cls", "bert_pair_module"])
def test_trust_remote_code_reaches_every_loader(tiny_bert_dir, monkeypatch, name):
    """model.trust_remote_code=true is passed on to the config, weights and tokenizer loaders."""
    import transformers

    from afqmc.config.registry import MODELS
    from afqmc.models.modeling import BertForPairwiseCLS

    weights = BertForPairwiseCLS if name == "bert_pair_cls" else transformers.BertModel
    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, weights):
        real = cls.from_pretrained.__func__

        def spy(cls_, *args, _real=real, **kwargs):
            seen.append((cls_.__name__, kwargs.get("trust_remote_code")))
            return _real(cls_, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    MODELS.get(name)(model_cfg(tiny_bert_dir, trust_remote_code=True, name=name), ["0", "1"])
    assert {cls for cls, _ in seen} == {"AutoConfig", "AutoTokenizer", weights.__name__}
    assert all(trust is True for _, trust in seen), seen
