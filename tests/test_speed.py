"""Speed features must not change results: first-token shortcut (exact) and bf16 autocast (within tolerance)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification, RobertaConfig,
                          RobertaForSequenceClassification)

from tuneforge.engine.loop import MATH_ATTENTION_BELOW, attention_backend
from tuneforge.models import set_dropout
from tuneforge.models.first_token import apply_first_token_shortcut
from tuneforge.run import train


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))


def _tiny(cls, config_cls):
    torch.manual_seed(0)
    return cls(config_cls(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=3, pad_token_id=1))


@pytest.mark.parametrize("cls,config_cls", [(BertForSequenceClassification, BertConfig),
                                            (RobertaForSequenceClassification, RobertaConfig)])
def test_first_token_shortcut_is_exact(cls, config_cls):
    full = _tiny(cls, config_cls)
    short = copy.deepcopy(full)
    assert apply_first_token_shortcut(short)
    ids = torch.randint(3, 100, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows: the mask must reach the shortcut layer
    mask[2, 3:] = 0
    labels = torch.tensor([0, 1, 2, 0])
    full.eval(), short.eval()
    a = full(input_ids=ids, attention_mask=mask, labels=labels)
    b = short(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
    a.loss.backward(), b.loss.backward()
    for (name, p), q in zip(full.named_parameters(), short.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert [n for n, _ in full.named_parameters()] == [n for n, _ in short.named_parameters()]


def test_first_token_shortcut_is_only_used_where_exact():
    token = _tiny(BertForTokenClassification, BertConfig)  # every token is read: no shortcut
    assert not apply_first_token_shortcut(token)


def test_shortcut_and_precision_are_reported_and_bf16_agrees_with_fp32(text_recipe, tmp_path):
    """The same tiny run in fp32 and in bf16 autocast ends at close eval metrics; the summary says what ran."""
    runs = {p: train(text_recipe(train={"precision": p, "max_steps": 40}), output=str(tmp_path / p), quiet=True)
            for p in ("fp32", "bf16")}
    for p, r in runs.items():
        assert r.summary["precision"] == p
        assert r.summary["strategies"]["first_token_shortcut"] is True
    fp32, bf16 = (json.loads(x) for x in [(runs[p].run_dir / "summary.json").read_text() for p in ("fp32", "bf16")])
    assert bf16["eval"]["loss"] == pytest.approx(fp32["eval"]["loss"], abs=0.05)
    assert abs(bf16["eval"]["accuracy"] - fp32["eval"]["accuracy"]) <= 0.05


def test_shortcut_off_gives_the_same_training(text_recipe, tmp_path):
    """Without dropout (model.dropout: 0; its masks draw from the RNG per element) the runs match step for step."""
    runs = {}
    for on in (True, False):
        recipe = text_recipe(model={"dropout": 0.0}, train={"max_steps": 60, "first_token_shortcut": on})
        runs[on] = train(recipe, output=str(tmp_path / str(on)), quiet=True)
        assert runs[on].summary["strategies"]["first_token_shortcut"] is on
    a, b = ([json.loads(x) for x in (runs[on].run_dir / "metrics.jsonl").read_text().splitlines()] for on in runs)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["metrics"]["loss"] == pytest.approx(y["metrics"]["loss"], abs=1e-4)


def test_model_dropout_reaches_every_layer_and_the_saved_config(text_recipe, tmp_path):
    r = train(text_recipe(model={"dropout": 0.0}, train={"max_steps": 4}), output=str(tmp_path / "r"), quiet=True)
    assert r.summary["strategies"]["dropout"] == 0.0
    saved = json.loads((r.run_dir / "model" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.0 and saved["attention_probs_dropout_prob"] == 0.0

    model = _tiny(BertForSequenceClassification, BertConfig)
    model.head_drop_rate = 0.3  # a float attribute read at forward time (timm's drop_rate, Llama's attention_dropout)
    assert set_dropout(model, 0.05) > 0
    assert all(m.p == 0.05 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.head_drop_rate == 0.05 and model.config.hidden_dropout_prob == 0.05

    from timm.layers import DropPath

    model.drop_path = DropPath(0.2)  # stochastic depth (timm's per-block schedule) is not dropout: left alone
    model.drop_path_rate = 0.2
    set_dropout(model, 0.0)
    assert model.drop_path.drop_prob == 0.2 and model.drop_path_rate == 0.2


def test_cpu_math_attention_for_short_batches_matches_the_default_kernel():
    """Short CPU batches run attention on the math kernel (faster there than flash); same logits and gradients."""
    cpu = torch.device("cpu")
    short = {"input_ids": torch.randint(3, 100, (4, 9))}
    assert not isinstance(attention_backend(short, cpu), type(attention_backend({}, cpu)))
    long_batch = {"input_ids": torch.zeros(1, MATH_ATTENTION_BELOW, dtype=torch.long)}
    assert isinstance(attention_backend(long_batch, cpu), type(attention_backend({}, cpu)))  # nullcontext
    model = _tiny(BertForSequenceClassification, BertConfig)
    set_dropout(model, 0.0)  # dropout off: PyTorch would pick its flash kernel by default
    mask = torch.ones_like(short["input_ids"])
    mask[1, 4:] = 0
    grads = []
    for ctx in (attention_backend(short, cpu), copy.copy(attention_backend({}, cpu))):
        model.zero_grad()
        with ctx:
            out = model(input_ids=short["input_ids"], attention_mask=mask, labels=torch.tensor([0, 1, 2, 0]))
        out.loss.backward()
        grads.append((out.logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_pad_to_multiple_rounds_widths_and_gives_the_same_training(text_recipe, tmp_path):
    """Widths round up to data.pad_to_multiple_of (fewer shapes); the extra padding is masked, so without dropout
    (whose masks depend on the shape) the runs match step for step."""
    from tuneforge.data.text import PadCollator

    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "labels": n % 2} for n in (3, 9)]
    batch = PadCollator(0, multiple=8)(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 12
    runs = {}
    for m in (1, 8):
        recipe = text_recipe(model={"dropout": 0.0}, data={"pad_to_multiple_of": m}, train={"max_steps": 40})
        runs[m] = train(recipe, output=str(tmp_path / str(m)), quiet=True)
        assert runs[m].summary["strategies"]["pad_to_multiple_of"] == m
    a, b = ([json.loads(x) for x in (runs[m].run_dir / "metrics.jsonl").read_text().splitlines()] for m in runs)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["metrics"]["loss"] == pytest.approx(y["metrics"]["loss"], abs=1e-4)
