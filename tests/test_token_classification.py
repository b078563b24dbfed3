"""Token classification: CoNLL / JSONL reading, sub-word alignment, windows, seqeval metrics, predict offsets."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import tuneforge
from tuneforge.config import load_config
from tuneforge.data.conll import read_tagged
from tuneforge.data.examples import Examples
from tuneforge.data.tagging import IGNORE, assign_owners, build_windows, plan_windows, split_words
from tuneforge.errors import DataError
from tuneforge.predict import Predictor
from tuneforge.tasks import create_task
from tuneforge.metrics import TagMetrics

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the visited with and met in at said today from works for john mary peter paris london new york acme "
    "glob ##ex play ##ing , . !").split()
PER, ORG = ["john", "mary", "peter"], ["acme", "globex"]
FILLER = ["the", "visited", "with", "met", "said", "today", ",", ".", "!"]
LOC = [["paris"], ["london"], ["new", "york"]]


def quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def ner_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random-init BERT with a WordPiece vocabulary where globex = glob ##ex."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-ner-bert")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    assert len(tok) == len(VOCAB) and tok.tokenize("globex playing") == ["glob", "##ex", "play", "##ing"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertForTokenClassification(config).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "vocab.txt").unlink()
    return d


@pytest.fixture(scope="module")
def tokenizer(ner_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ner_model_dir))


def make_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(2, 7)):
        r = rng.random()
        if r < 0.2:
            words.append(rng.choice(PER)), tags.append("B-PER")
        elif r < 0.35:
            loc = rng.choice(LOC)
            words.extend(loc), tags.extend(["B-LOC"] + ["I-LOC"] * (len(loc) - 1))
        elif r < 0.45:
            words.append(rng.choice(ORG)), tags.append("B-ORG")
        else:
            words.append(rng.choice(FILLER)), tags.append("O")
    return words, tags


def write_conll(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words, tags = make_sentence(rng)
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ner-data")
    write_conll(d / "train.txt", 200, 1)
    write_conll(d / "valid.txt", 40, 2)
    write_conll(d / "test.txt", 30, 3)
    return d


def recipe(model_dir, data_dir, **data) -> dict:
    return {"task": "token_classification", "model": {"name": str(model_dir)},
            "data": {"dir": str(data_dir), "max_length": 6, **data},  # 4 word pieces a window: most sentences split
            "train": {"lr": 3e-3, "max_steps": 60, "batch_size": 16, "precision": "fp32", "threads": 1,
                      "schedule": "constant", "seed": 0},
            "eval": {"every_steps": 30}, "output": {"progress": False, "report": False}}


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, ner_model_dir, ner_dir):
    return tuneforge.train(recipe(ner_model_dir, ner_dir), output=str(tmp_path_factory.mktemp("runs") / "ner"),
                           quiet=True)


# ------------------------------------------------------------------ reading


def test_conll_reader_skips_docstart_and_splits_sentences(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n-DOCSTART- -X- -X- O\nPeter NNP B-PER\n"
                 "Blackburn NNP I-PER\n\n\n", encoding="utf-8")
    ex = read_tagged(f, load_config({"model": "x", "data": {"dir": "."}}).data)
    assert ex.inputs == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [list(t) for t in ex.labels] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert ex.labels[1].lines == [7, 8] and ex.where[1] == f"{f} line 7"


def test_conll_wrong_column_count_names_file_and_line(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("EU NNP B-ORG\nrejects VBZ O\n\nNew York NNP B-LOC\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{f} line 4: 4 columns, but the file's first token line has 3"):
        read_tagged(f, load_config({"model": "x", "data": {"dir": "."}}).data)


def test_unknown_val_tag_names_file_and_line(tmp_path, ner_dir):
    (tmp_path / "train.txt").write_text((ner_dir / "train.txt").read_text())
    (tmp_path / "valid.txt").write_text("john X X B-PER\nvisited X X O\n\nparis X X B-GPE\n")
    cfg = load_config({"task": "token_classification", "model": "x", "data": {"dir": str(tmp_path)}})
    task = create_task(cfg, quiet)
    train, val, _ = task.read_examples("text")
    with pytest.raises(DataError, match=r"valid.txt line 4: tag 'B-GPE' is not in the train tag set"):
        task.fit_labels(train, val)


def test_jsonl_reader_and_length_mismatch(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"tokens": ["john", "met"], "tags": ["B-PER", "O"]}\n\n{"tokens": ["x"], "tags": ["O", "O"]}\n')
    dcfg = load_config({"model": "x", "data": {"dir": "."}}).data
    with pytest.raises(DataError, match=rf"{f} line 3: 1 tokens but 2 tags"):
        read_tagged(f, dcfg)
    f.write_text('{"tokens": ["john", "met"], "tags": ["B-PER", "O"]}\n')
    ex = read_tagged(f, dcfg)
    assert ex.inputs == [["john", "met"]] and list(ex.labels[0]) == ["B-PER", "O"]


# ------------------------------------------------------------------ alignment and windows


def test_first_subword_gets_the_label(tokenizer):
    w = build_windows(tokenizer, [["globex", "playing", "john"]], [[1, 0, 2]], 32, None, score_all=True)
    ids, labels = w.features["input_ids"][0], w.features["labels"][0]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "glob", "##ex", "play", "##ing", "john", "[SEP]"]
    assert labels == [IGNORE, 1, IGNORE, 0, IGNORE, 2, IGNORE]
    assert w.features["word_ids"][0] == [IGNORE, 0, IGNORE, 1, IGNORE, 2, IGNORE]


@pytest.mark.parametrize("seed", range(30))
def test_window_plan_covers_every_word_once(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 5) for _ in range(rng.randint(1, 40))]
    budget = rng.randint(2, 12)
    windows = plan_windows(lengths, budget, rng.randint(0, budget))
    owner = assign_owners(lengths, windows)
    assert windows[0][0] == 0 and windows[-1][1] == len(lengths)
    for (s0, e0), (s1, e1) in zip(windows, windows[1:]):
        assert s0 < s1 <= e0 < e1  # overlapping or adjacent, always advancing
    for s, e in windows:
        assert e - s == 1 or sum(lengths[s:e]) <= budget
    for w, k in enumerate(owner):
        assert windows[k][0] <= w < windows[k][1]


def test_eval_windows_score_every_word_exactly_once(tokenizer):
    rng = random.Random(0)
    sents = [[rng.choice(PER + ORG + FILLER + ["playing"]) for _ in range(rng.randint(1, 25))] for _ in range(40)]
    tags = [[i % 3 for i in range(len(s))] for s in sents]
    w = build_windows(tokenizer, sents, tags, 8, 3, score_all=False)
    assert w.long_sentences > 10 and len(w.lengths) > len(sents)
    seen = {}
    for sid, wids, labels, ids in zip(w.features["sent_id"], w.features["word_ids"], w.features["labels"],
                                      w.features["input_ids"]):
        assert len(ids) <= 8
        for wid, label in zip(wids, labels):
            if wid != IGNORE:
                assert (sid, wid) not in seen, "a word is scored twice"
                seen[(sid, wid)] = label
            else:
                assert label == IGNORE
    assert sorted(seen) == [(s, i) for s, sent in enumerate(sents) for i in range(len(sent))]
    assert all(seen[(s, i)] == tags[s][i] for s, i in seen)
    train = build_windows(tokenizer, sents, tags, 8, 3, score_all=True)  # training: every window fully labelled
    assert sum(label != IGNORE for row in train.features["labels"] for label in row) > len(seen)


def test_window_with_nothing_to_score_is_dropped_and_counted(tokenizer):
    # word pieces [2, 1, 3, 2, 1, 2, 1] with 8 pieces a window and 7 shared: one window owns no word
    sent = ["globex", "john", "globexing", "playing", "john", "globex", "mary"]
    w = build_windows(tokenizer, [sent], [[0] * 7], 10, 7, score_all=False)
    assert w.unscored_windows == 1
    scored = sorted(i for row in w.features["word_ids"] for i in row if i != IGNORE)
    assert scored == list(range(7))


def test_empty_sentence_and_dropped_word_are_counted(tmp_path, ner_model_dir, ner_dir):
    (tmp_path / "train.txt").write_text((ner_dir / "train.txt").read_text())
    (tmp_path / "valid.jsonl").write_text('{"tokens": [], "tags": []}\n{"tokens": ["john", "\\u200b"], '
                                          '"tags": ["B-PER", "O"]}\n')
    cfg = recipe(ner_model_dir, tmp_path)
    run = tuneforge.train({**cfg, "train": {**cfg["train"], "max_steps": 2}}, output=str(tmp_path / "run"),
                          quiet=True)
    log = (run.run_dir / "train.log").read_text()
    assert "1 empty sentence(s) skipped" in log and "1 word(s) with no sub-word token" in log, log
    report = run.summary["data"]["windows"]["val"]
    assert report["empty_sentences"] == 1 and report["unknown_token_words"] == 1 and report["sentences"] == 2
    assert run.metrics["sentences"] == 1


def test_batch_without_labels_has_zero_loss_not_nan(ner_model_dir):
    cfg = load_config({"task": "token_classification", "model": str(ner_model_dir), "data": {"dir": "."}})
    task = create_task(cfg, quiet)
    task.labels = ["O", "B-PER"]
    logits = torch.randn(2, 5, 2, requires_grad=True)
    loss = task.loss(logits, {"labels": torch.full((2, 5), IGNORE)})
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert logits.grad is not None


@pytest.mark.parametrize("norm", ["dataset", "batch"])
def test_train_loss_weighs_every_token_equally(ner_model_dir, norm):
    """token_loss_norm: dataset -> summed token loss / the train mean per batch (a short-sentence batch counts
    for less than a long one); batch -> this batch's mean (HF). Evaluation's loss is the mean either way."""
    cfg = load_config({"task": {"type": "token_classification", "token_loss_norm": norm},
                       "model": str(ner_model_dir), "data": {"dir": "."}, "train": {"batch_size": 2}})
    task = create_task(cfg, quiet)
    task.labels = ["O", "B-PER"]
    task.tokens_per_batch = 6.0
    task.make_loss()
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 2)
    labels = torch.full((2, 5), IGNORE)
    labels[0, :2] = torch.tensor([0, 1])  # 3 labelled tokens in this batch, half the train mean
    labels[1, 1] = 0
    per_token = torch.nn.functional.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE],
                                                  reduction="none")
    batch = {"labels": labels}
    assert torch.allclose(task.loss(logits, batch), per_token.mean())
    want = per_token.sum() / 6.0 if norm == "dataset" else per_token.mean()
    assert torch.allclose(task.train_loss(logits, batch), want)


def test_tokens_per_batch_is_the_train_mean(ner_model_dir, ner_dir):
    from tuneforge.models import create_model

    cfg = load_config({"task": "token_classification", "model": str(ner_model_dir),
                       "data": {"dir": str(ner_dir)}, "train": {"batch_size": 4}})
    task = create_task(cfg, quiet)
    train, val, _ = task.read_examples("text")
    task.fit_labels(train, val)
    bundle = create_model(cfg.model, task.head_spec(), log=quiet)
    built = task.build(train, bundle, "train")
    labelled = sum(int((torch.as_tensor(built.dataset[i]["labels"]) != IGNORE).sum())
                   for i in range(len(built.dataset)))
    assert task.tokens_per_batch == pytest.approx(labelled / len(built.dataset) * 4)


def test_tag_metrics_entity_level():
    m = TagMetrics(["O", "B-PER", "I-PER", "B-LOC"])
    # sentence 0: "john smith in paris": gold PER(0-1) LOC(3); predicted PER(0) only + LOC(3)
    batch = {"word_ids": torch.tensor([[IGNORE, 0, 1, 2, 3, IGNORE]]), "sent_id": torch.tensor([0]),
             "labels": torch.tensor([[IGNORE, 1, 2, 0, 3, IGNORE]])}
    logits = torch.zeros(1, 6, 4)
    for pos, tag in ((1, 1), (2, 0), (3, 0), (4, 3)):
        logits[0, pos, tag] = 5.0
    m.update(logits, batch, 0.5)
    out = m.compute()
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["f1"] == 0.5
    assert out["accuracy"] == 0.75 and out["per_type"]["LOC"]["f1"] == 1.0 and out["per_type"]["PER"]["f1"] == 0.0


# ------------------------------------------------------------------ training, eval and predict


def test_ner_learns_and_reports_test(ner_run):
    s = ner_run.summary
    assert s["metric"] == "f1"  # the task's default metric
    assert ner_run.metrics["f1"] >= 0.9, ner_run.metrics
    assert s["test"]["f1"] >= 0.9 and set(s["eval"]["per_type"]) == {"LOC", "ORG", "PER"}
    assert s["data"]["train"] > 200 and s["data"]["windows"]["val"]["split_sentences"] > 0  # windows were used


def test_eval_reproduces_run_metrics(ner_run, ner_dir):
    again = Predictor(ner_run.run_dir, log=quiet).evaluate(ner_dir / "valid.txt")
    assert again["f1"] == ner_run.metrics["f1"] and again["sentences"] == 40


def test_predict_entities_with_char_offsets(ner_run):
    text = "Today John visited New York, with Mary!"
    out, pre, empty = Predictor(ner_run.run_dir, log=quiet).predict([text, ["acme", "met", "peter"], ""])
    ents = {(e["type"], e["text"]) for e in out["entities"]}
    assert ents == {("PER", "John"), ("LOC", "New York"), ("PER", "Mary")}, out
    for e in out["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
    assert out["words"] == split_words(text)[0] and len(out["tags"]) == len(out["words"])
    assert [(e["type"], e["word_start"], e["word_end"]) for e in pre["entities"]] == [("ORG", 0, 1), ("PER", 2, 3)]
    assert empty == {"entities": [], "words": [], "tags": []}


def test_split_words_offsets():
    words, spans = split_words("Mr. O'Neil (CEO) paid $5,000.")
    assert words == ["Mr", ".", "O", "'", "Neil", "(", "CEO", ")", "paid", "$", "5", ",", "000", "."]
    assert all("Mr. O'Neil (CEO) paid $5,000."[s:e] == w for w, (s, e) in zip(words, spans))


def test_predict_cli_json(ner_run, capsys):
    from tuneforge.cli import main

    assert main(["predict", str(ner_run.run_dir), "--text", "mary met john in paris"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [e["text"] for e in row["entities"]] == ["mary", "john", "paris"]


def test_examples_roundtrip_through_sampling(ner_dir):
    cfg = load_config({"task": "token_classification", "model": "x",
                       "data": {"dir": str(ner_dir), "max_train_samples": 10}})
    train, val, test = create_task(cfg, quiet).read_examples("text")
    assert len(train) == 10 and len(val) == 40 and len(test) == 30
    assert isinstance(train, Examples) and all(len(w) == len(t) for w, t in zip(train.inputs, train.labels))


def test_eval_cli_prints_json_only(ner_run, ner_dir, capsys):
    from tuneforge.cli import main

    assert main(["eval", str(ner_run.run_dir), "--data", str(ner_dir / "valid.txt")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # the data summary goes to stderr, not into the JSON
    assert out["f1"] == ner_run.metrics["f1"] and set(out["per_type"]) == {"LOC", "ORG", "PER"}
    assert "40 sentences" in captured.err
