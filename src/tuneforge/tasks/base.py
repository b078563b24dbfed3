"""The Task seam: everything that differs between problem types, behind one small interface.

A task owns: reading and checking labels, the head it needs, turning examples into a Dataset, its loss,
its metrics and how predictions are decoded. The training loop knows none of this.

Adding a task: one module with a `Task` subclass registered as `@TASKS.register("name")`, imported in
`tasks/__init__.py`. Tasks whose inputs are one row each (text, text pair, image, ...) subclass `RowTask`
(tasks/rows.py), which builds the inputs for every modality."""
from __future__ import annotations


from typing import Callable, Iterable, Optional

import torch

from tuneforge.data.examples import Built, Examples, sample, split, split_by_name  # noqa: F401 (Built: re-exported)
from tuneforge.data.sources import read_split, repeat_files
from tuneforge.errors import ConfigError, DataError, MissingLabelsError
from tuneforge.losses import LOSSES
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.registry import Registry

TASKS: Registry[type] = Registry("task")


class Task:
    name = ""
    default_loss = "cross_entropy"
    allowed_losses: tuple[str, ...] = ("cross_entropy",)
    default_metric = "accuracy"
    metric_names: tuple[str, ...] = ("loss",)  # scalars new_metrics().compute() returns (eval.metric choices)
    minimize = ("loss", "mse", "mae", "rmse")  # metrics where lower is better
    file_reader: Optional[str] = None  # FILE_READERS name; None: the model's modality
    # the HTML report predicts the whole validation split with the kept model (False: too costly, e.g. generation)
    report_predictions = True

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.labels: list[str] = []
        self.report: dict = {}  # data counts worth a line in summary.json (rows without labels, windows, ...)
        self.remedy = "none"  # the imbalance remedy chosen from the data (choose_imbalance)
        self._loss: Optional[Callable] = None  # built by make_loss once the data is known
        self._clamp_noted = False

    # ---------------------------------------------------------------- recipe checks (before any data is read)
    def check_recipe(self) -> None:
        """task.loss and eval.metric must fit this task: checked before anything is loaded or written."""
        loss = self.cfg.task.loss
        if loss is not None and loss not in self.allowed_losses:
            raise ConfigError(f"task.loss '{loss}' does not fit task '{self.name}'; choose one of: "
                              f"{', '.join(self.allowed_losses)}")
        metric = self.cfg.eval.metric
        if metric is not None and metric not in self.metric_names:
            raise ConfigError(f"eval.metric '{metric}' is not computed by task '{self.name}'; choose one of: "
                              f"{', '.join(self.metric_names)}")

    # ---------------------------------------------------------------- data
    def read_examples(self, modality: str) -> tuple[Examples, Examples, Optional[Examples]]:
        d, seed = self.cfg.data, self.cfg.train.seed
        train = read_split(d, modality, "train", self.log, self.file_reader)
        if train is None:
            raise DataError("no training data: set data.dir, data.train or data.source")
        val = read_split(d, modality, "val", self.log, self.file_reader)
        test = self._read_test(modality)
        if d.val_from is not None and val is not None:
            raise ConfigError("data.val_from takes validation files out of train; a val split is given as well "
                              "(data.val or a val file / folder under data.dir): remove one of them")
        if d.val_from is not None:
            train, val = split_by_name(train, d.val_from.regex)
            self.log(f"data: validation = the {len(val)} of {len(train) + len(val)} files whose name matches "
                     f"data.val_from.regex '{d.val_from.regex}'")
        elif val is None:
            train, val = split(train, d.val_split, seed, stratify=self.stratify_key(train))
            self.log(f"data: no validation set given; split off {len(val)} of {len(train) + len(val)} "
                     f"examples (data.val_split={d.val_split}, seed {seed})")
        train = repeat_files(sample(train, d.max_train_samples, seed), d, self.log)
        val = sample(val, d.max_val_samples, seed)
        for name, ex in (("train", train), ("val", val)):
            if len(ex) == 0:
                raise DataError(f"the {name} split is empty; give it at least one example")
        return train, val, test

    def _read_test(self, modality: str) -> Optional[Examples]:
        """data.test, or a test.* file found under data.dir; a found one without labels is skipped."""
        d = self.cfg.data
        if d.test is False or d.source or not (d.dir or d.test):
            return None
        try:
            return read_split(d, modality, "test", self.log, self.file_reader)
        except MissingLabelsError as e:
            if d.test:
                raise
            self.log(f"data: the test split is skipped: {e} (set data.test: false to skip it silently)")
            return None

    def stratify_key(self, ex: Examples) -> Optional[list]:
        return None

    def fit_labels(self, train: Examples, val: Examples) -> None:
        """Learn the label space from train and check val against it."""

    def max_length(self, bundle: ModelBundle) -> int:
        """data.max_length, clamped (with a log line) to the longest input the model takes."""
        limit, wanted = bundle.max_tokens(), self.cfg.data.max_length
        if limit is None or wanted <= limit:
            return wanted
        if not self._clamp_noted:
            self.log(f"data.max_length {wanted} is above what model '{bundle.name}' takes ({limit} tokens): "
                     f"inputs are cut at {limit}")
            self._clamp_noted = True
        return limit

    def encode_labels(self, ex: Examples) -> Optional[list]:
        """The labels as the loss sees them (class ids, standardised values, multi-hot rows, tag ids); None when
        the examples have no labels (predict). A label outside what training learned is a DataError."""
        raise NotImplementedError

    def gold_labels(self, ex: Examples) -> list:
        """The labels in the form predictions name them (class names, values, label lists, tag lists): what
        reports compare `predict` outputs with."""
        raise NotImplementedError

    def head_spec(self) -> HeadSpec:
        raise NotImplementedError

    def build(self, ex: Examples, bundle: ModelBundle, split: str) -> Built:
        """Examples → Dataset for a split: "train" (augmented, shuffled), "val", "test" or "predict"."""
        raise NotImplementedError

    def class_counts(self, train: Examples) -> Optional[dict]:
        """Examples per class in train (None: the task has no classes)."""
        return None

    def add_to_report(self, report: dict, log) -> None:
        """After the splits are built: add task-specific sections to data_report.json (e.g. audio durations, token
        counts) and log a line for each."""

    def train_inputs_vary(self, bundle: ModelBundle) -> bool:
        """True when train inputs are random per epoch (augmentation): backbone features can then not be cached."""
        return False

    def choose_imbalance(self, report: dict) -> str:
        """Pick the imbalance remedy (data.imbalance); tasks with classes override this."""
        mode = self.cfg.data.imbalance
        if mode in ("class_weights", "resample", "focal"):
            raise ConfigError(f"data.imbalance: {mode} needs class labels, and task '{self.name}' has none; "
                              "use data.imbalance: none")
        return "none"

    # ---------------------------------------------------------------- training
    def class_weights(self) -> Optional[torch.Tensor]:
        return None

    def loss_name(self) -> str:
        return self.cfg.task.loss or self.default_loss

    def make_loss(self) -> None:
        """Build the loss once the data is known (class weights); before any run folder is written."""
        self._loss = LOSSES.get(self.loss_name(), "task.loss")(self.cfg.task, self.class_weights())

    def forward(self, bundle: ModelBundle, batch: dict):
        """The model's outputs for a batch already on the device (tasks with their own forward override this)."""
        return bundle.logits(batch)

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        return self._loss(outputs, batch["labels"])

    def train_loss(self, outputs, batch: dict) -> torch.Tensor:
        """The loss the optimizer sees; `loss` (also used for evaluation) unless a task normalises differently."""
        return self.loss(outputs, batch)

    def new_metrics(self, bundle: ModelBundle):
        """A streaming accumulator: update(outputs, batch, loss) per batch, then compute() -> dict."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Called once the kept model's validation is done: freeze what was tuned on validation
        (e.g. multilabel thresholds) so later evaluations (test, `tuneforge eval`) reuse it."""

    def before_training(self, bundle: ModelBundle, run_dir, resumed: bool, log) -> None:
        """The run folder is open and nothing has trained yet (e.g. record the base model's generations)."""

    def after_training(self, bundle: ModelBundle, run_dir, log) -> None:
        """The kept model is loaded and evaluated, not yet saved (e.g. write generations.jsonl)."""

    def metric_mode(self, metric: str) -> str:
        mode = self.cfg.eval.mode
        return mode if mode != "auto" else ("min" if metric in self.minimize else "max")

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, bundle: ModelBundle, loader, ex: Examples, forward: Callable, top_k: Optional[int] = None,
                **options) -> list[dict]:
        """One output per input. `forward(batch) -> (outputs, batch on the device)` runs the model exactly as
        evaluation does; tasks that generate (ASR, SFT) override this and read their `options`."""
        order = [i for batch in loader.batch_sampler.batches() for i in batch]

        def batches():
            for batch in loader:
                outputs, batch = forward(batch)
                yield outputs.float(), batch

        return self.decode_batches(ex, batches(), order, top_k)  # also undoes the length-sorted batching

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        raise NotImplementedError

    def decode_batches(self, ex: Examples, batches: Iterable[tuple[torch.Tensor, dict]], order: list[int],
                       top_k: Optional[int]) -> list[dict]:
        """One output per input from the predict loader's (logits, batch) pairs; `order` maps the (length-sorted)
        dataset rows back to inputs. Tasks whose rows are not one per input (token windows) override this."""
        outputs = [out for logits, _ in batches for out in self.decode(logits, top_k)]
        result: list[dict] = [{}] * len(outputs)
        for i, out in zip(order, outputs):
            result[i] = out
        return result

    def state(self) -> dict:
        """What predict needs besides the weights (saved in tuneforge.json)."""
        return {"task": self.name, "labels": self.labels}

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels", []))


def create_task(cfg, log=print) -> Task:
    task = TASKS.get(cfg.task.type, "task.type")(cfg, log)
    task.check_recipe()
    return task


def task_from_saved(cfg, state: dict, log=print) -> Task:
    task = create_task(cfg, log)
    task.load_state(state)
    task.make_loss()
    return task


__all__ = ["TASKS", "Task", "Built", "create_task", "task_from_saved"]
