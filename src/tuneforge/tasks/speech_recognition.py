"""Speech recognition (`task: asr`, alias `speech_recognition`): fine-tune Whisper on (audio, transcript) pairs.

Data: tables of `path,text` (reader `audio_text`; paths relative to the table). Labels: the transcript's token ids
after Whisper's decoder prefix, `<|lang|> <|transcribe|> <|notimestamps|> text <|endoftext|>` (the model puts
`<|startoftranscript|>` in front when it shifts them into decoder inputs), padded with -100; the text gets the
leading space Whisper writes before every transcript. The loss is the model's token cross-entropy. Evaluation
decodes every clip (greedy, or beam search with task.num_beams) and reports WER and CER (jiwer, after
`metrics.normalize_transcript`: lower-case, punctuation dropped) with the teacher-forced loss; WER picks the kept
model. `predict` returns `{"text": transcript}` per input (`{"error": ...}` for a clip that cannot be read)."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.audio import audio_library
from tuneforge.data.audio_dataset import IGNORE_INDEX
from tuneforge.data.examples import Examples
from tuneforge.data.report import _percentiles
from tuneforge.errors import ConfigError, DataError
from tuneforge.metrics import TranscriptMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.models.speech import SEQ2SEQ
from tuneforge.tasks.audio_inputs import AudioInputs
from tuneforge.tasks.base import TASKS, Built, Task


class SpeechRecognition(Task):
    name = "asr"
    default_metric = "wer"
    metric_names = ("loss", "wer", "cer")
    minimize = Task.minimize + ("wer", "cer")
    file_reader = "audio_text"

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.audio = AudioInputs(cfg, log)
        self.tokenizer = None  # the model's (labels are its token ids); taken from the bundle in `build`
        self.transcripts: dict[str, list[str]] = {}  # split → transcripts, for the data report

    def head_spec(self) -> HeadSpec:
        return HeadSpec(0, [], SEQ2SEQ)

    def check_recipe(self) -> None:
        super().check_recipe()
        audio_library("jiwer")  # WER / CER: a missing package is one line before anything runs

    def fit_labels(self, train: Examples, val: Examples) -> None:
        self.transcripts = {"train": list(train.labels), "val": list(val.labels)}

    # ---------------------------------------------------------------- labels
    def prefix_ids(self) -> list[int]:
        """<|lang|> <|task|> <|notimestamps|>: what Whisper's decoder reads after <|startoftranscript|>."""
        t, tok = self.cfg.task, self.tokenizer
        tokens = [f"<|{t.language}|>", f"<|{t.asr_task}|>", "<|notimestamps|>"]
        ids = tok.convert_tokens_to_ids(tokens)
        missing = [name for name, i in zip(tokens, ids) if i is None or i == tok.unk_token_id]
        if missing:
            raise ConfigError(f"the model's vocabulary has no {', '.join(missing)} token; check task.language "
                              f"('{t.language}': a Whisper language code such as en, de, fr) and task.asr_task")
        return list(ids)

    def encode_labels(self, ex: Examples) -> Optional[list[list[int]]]:
        if ex.labels is None:
            return None
        prefix, eot = self.prefix_ids(), self.tokenizer.eos_token_id
        texts = [" " + str(text).strip() for text in ex.labels]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [prefix + list(row) + [eot] for row in ids]

    def gold_labels(self, ex: Examples) -> list[str]:
        """The reference transcripts, as `predict` outputs are compared with them (report)."""
        return [str(text).strip() for text in ex.labels]

    def _check_lengths(self, labels: list[list[int]], ex: Examples, bundle: ModelBundle) -> None:
        limit = bundle.model.config.max_target_positions - 1  # <|startoftranscript|> takes one position
        for row, where in zip(labels, ex.where):
            if len(row) > limit:
                raise DataError(f"{where}: transcript is {len(row)} tokens with Whisper's prefix, longer than the "
                                f"decoder's {limit}; split the clip and its transcript")

    def build(self, ex: Examples, bundle: ModelBundle, split: str) -> Built:
        if bundle.head.kind != SEQ2SEQ or bundle.tokenizer is None:
            raise ConfigError(f"task asr needs a Whisper speech-to-text model (e.g. model: whisper-base); "
                              f"'{bundle.name}' is a {bundle.source} model")
        self.tokenizer = bundle.tokenizer
        ex = self.audio.select(ex, bundle, split)
        labels = self.encode_labels(ex)
        if labels is not None:
            self._check_lengths(labels, ex, bundle)
        built = self.audio.build(ex, bundle, split, labels, token_labels=True)
        built.skipped, built.dropped = len(ex.skipped), ex.dropped
        return built

    def add_to_report(self, report: dict, log) -> None:
        self.audio.add_to_report(report, False, log)
        words = {split: _percentiles([len(t.split()) for t in texts]) for split, texts in self.transcripts.items()}
        report["transcript_words"] = words
        if words.get("train"):
            p = words["train"]
            log(f"data report: train transcripts p5 {p['p5']:.0f} / median {p['p50']:.0f} / p95 {p['p95']:.0f} / "
                f"max {p['max']:.0f} words")

    def train_inputs_vary(self, bundle: ModelBundle) -> bool:
        return self.audio.vary()

    # ---------------------------------------------------------------- training and evaluation
    def forward(self, bundle: ModelBundle, batch: dict):
        return bundle.seq2seq(batch)

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        return outputs.loss

    def transcribe(self, bundle: ModelBundle, input_features: torch.Tensor, **options) -> list[str]:
        t = self.cfg.task
        return bundle.transcribe(input_features, t.language, t.asr_task, options.get("num_beams") or t.num_beams,
                                 options.get("max_new_tokens") or t.max_new_tokens or 128)

    def references(self, batch: dict) -> list[str]:
        ids = batch["labels"].clone()
        ids[ids == IGNORE_INDEX] = self.tokenizer.eos_token_id
        return [t.strip() for t in self.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)]

    def new_metrics(self, bundle: ModelBundle):
        self.tokenizer = bundle.tokenizer
        return TranscriptMetrics(lambda batch: self.transcribe(bundle, batch["input_features"]), self.references)

    @torch.no_grad()
    def predict(self, bundle: ModelBundle, loader, ex: Examples, forward, top_k: Optional[int] = None,
                **options) -> list[dict]:
        """`options`: num_beams, max_new_tokens (default: the recipe's task settings)."""
        device = next(bundle.model.parameters()).device
        order = [i for batch in loader.batch_sampler.batches() for i in batch]
        texts = [text for batch in loader
                 for text in self.transcribe(bundle, batch["input_features"].to(device), **options)]
        outputs: list[dict] = [{}] * len(texts)
        for i, text in zip(order, texts):
            outputs[i] = {"text": text}
        return outputs  # the decodable clips', in order (Predictor puts an error line where one was dropped)

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        raise NotImplementedError("asr decodes by generation (SpeechRecognition.predict)")


TASKS.register("asr")(SpeechRecognition)
TASKS.register("speech_recognition")(SpeechRecognition)  # the long name, same task

__all__ = ["SpeechRecognition"]
