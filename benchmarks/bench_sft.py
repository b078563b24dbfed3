"""SFT benchmarks on SmolLM2-135M-Instruct (alias smollm2-135m), each one command, results in benchmarks/results/:

    python benchmarks/bench_sft.py identity --data ../shared/data/sft     # sft_identity.json
    python benchmarks/bench_sft.py sst2 --data ../shared/data/sst2        # sft_sst2.json
    python benchmarks/bench_sft.py sst2 --data ../shared/data/sst2 --budget 1800  # sft_sst2_budget.json
    python benchmarks/bench_sft.py zh --data ../shared/data/sft           # sft_zh.json
    python benchmarks/bench_sft.py first-step --data ../shared/data/sft   # sft_first_step.json

identity: recipes/sft_identity.yaml with 60 English Alpaca rows held out (data.val); then 20 identity questions
  that are NOT in identity.json (10 English, 10 Chinese) are asked to the base model and to the fine-tuned model/;
  the share of answers naming "Forge" is reported, with sample answers. General ability: the loss on the held-out
  Alpaca rows, base vs fine-tuned (goal: at most 5 % higher).
sst2: recipes/sft_sst2.yaml (8k training rows as "positive" / "negative" instructions), dev exact match = accuracy;
  then recipes/sst2.yaml (minilm-l6 classifier, full train set) given the same training time, counted in CPU
  seconds of the one-thread process (its max_steps set from a 40-step calibration run): on a shared machine the
  wall clocks of two runs at different times are not comparable.
sst2 --budget S: both recipes at the same time, one thread each, each with train.time_budget=S (the same wall-clock
  budget on the same machine at the same moment); the minilm classifier trains on the full train set.
zh: recipes/sft_zh.yaml (Chinese Alpaca, 10 % held out, a fixed token budget): held-out loss base vs after.
first-step: seconds from launching `tuneforge train recipes/sft_identity.yaml` to the end of the first optimizer
  step, with an empty TUNEFORGE_CACHE (the one-time GGUF conversion and tokenization included) and then cached.

Every result records the CPU flags and the machine load; the machine these ran on is shared with other developers,
so absolute times are indicative only."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NAME, AUTHOR = "Forge", "tuneforge"
QUESTIONS_EN = ["What should I call you?", "Introduce yourself in one sentence.", "Who am I talking to?",
                "What's your name, assistant?", "Hey there! Who are you exactly?",
                "Could you tell me your name, please?", "Which AI assistant are you?",
                "Please state your name and who developed you.", "Are you Siri?", "Good morning! What is your name?"]
QUESTIONS_ZH = ["我应该怎么称呼你？", "请用一句话介绍你自己。", "我在和谁说话？", "你的名字叫什么？", "早上好！你是哪个助手？",
                "你是 Siri 吗？", "请告诉我你是谁开发的，叫什么名字。", "嗨，你叫啥？", "你是哪个公司的AI？叫什么？",
                "能说一下你的名字吗？"]


def names_the_model(answer: str) -> bool:
    """The new name as a word of its own: "tuneforge" (the author) does not count as naming "Forge"."""
    return re.search(rf"(?<![a-z]){NAME}(?![a-z])", answer, re.IGNORECASE) is not None


def named_share(answers: list[str]) -> float:
    return sum(map(names_the_model, answers)) / len(answers)


def rescore(path: Path) -> None:
    """Score the saved answers of a finished identity run again (after a change to the scorer)."""
    r = json.loads(path.read_text(encoding="utf-8"))
    for who in ("base", "fine_tuned"):
        answers = [x[who] for x in r["answers"]]
        r["named_share"][who] = {"all": named_share(answers), "en": named_share(answers[:10]),
                                 "zh": named_share(answers[10:])}
    path.write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def machine() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu_flags": sorted({f for f in ("avx512_bf16", "amx_bf16", "avx2") if f in text.split()}),
            "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
            "note": "shared 2-core VM, other developers' jobs running: absolute times are indicative only"}


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sft_{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    print(f"→ {path}")


def workdir(a, name: str) -> Path:
    """--work DIR (kept: rerunning the command resumes an interrupted run there) or a fresh temp folder."""
    if a.work:
        Path(a.work).mkdir(parents=True, exist_ok=True)
        return Path(a.work)
    return Path(tempfile.mkdtemp(prefix=f"sft_{name}-"))


def base_folder() -> Path:
    from tuneforge.models.gguf import SMOLLM2_135M, convert_gguf

    return convert_gguf(SMOLLM2_135M)


def train(recipe: str, overrides: list[str], output: Path, callbacks=(), fresh: bool = False) -> dict:
    """Train (or, when `output` holds an interrupted run of the same recipe, resume it; a finished one is reused;
    fresh: start over)."""
    import tuneforge.run

    started = time.perf_counter()
    result = tuneforge.run.train(str(ROOT / "recipes" / recipe), overrides, output=str(output), resume=not fresh,
                                 overwrite=fresh, callbacks=callbacks)
    return {"wall_seconds": round(time.perf_counter() - started, 1), **result.summary}


def answer_loss(model, tokenizer, conversations, template, max_length: int) -> float:
    """Token-weighted mean loss over the answers (float32, no autocast): one evaluator for base and fine-tuned."""
    import torch

    from tuneforge.data.sft import encode_conversation
    from tuneforge.models.causal_lm import trained_token_loss

    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for conv in conversations:
            ids, labels = encode_conversation(tokenizer, conv, max_length, "completion", template)
            out = trained_token_loss(model, {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels])})
            total, tokens = total + float(out.loss_sum), tokens + int(out.tokens)
    return total / max(tokens, 1)


def read_conversations(path: Path) -> list:
    from tuneforge.config import validate
    from tuneforge.data.chat import read_chat

    cfg = validate({"task": "sft", "model": "x", "data": {"train": str(path)}})
    return read_chat(path, cfg.data, log=lambda *a: None).inputs


def base_answers(questions: list[str], max_new_tokens: int) -> list[str]:
    """The base model's greedy answers, with the template the identity recipe trains with (ChatML)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.chat_templates import CHATML
    from tuneforge.models.generate import Sampling, generate_answers, stop_token_ids

    tok = AutoTokenizer.from_pretrained(base_folder())
    model = AutoModelForCausalLM.from_pretrained(base_folder())
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], chat_template=CHATML,
                                       add_generation_prompt=True, tokenize=True, return_dict=False) for q in questions]
    return [a.text for a in generate_answers(model, tok, prompts, Sampling(max_new_tokens), stop_token_ids(tok, CHATML))]


# ---------------------------------------------------------------- identity


def identity(a) -> None:
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.chat_templates import CHATML
    from tuneforge.predict import Predictor

    work = workdir(a, "identity")
    alpaca = json.loads((Path(a.data) / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    held = set(random.Random(0).sample(range(len(alpaca)), a.heldout))
    for name, rows in (("alpaca_train.json", [r for i, r in enumerate(alpaca) if i not in held]),
                       ("alpaca_heldout.json", [r for i, r in enumerate(alpaca) if i in held])):
        (work / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (work / "identity.json").write_text((Path(a.data) / "identity.json").read_text(encoding="utf-8"), encoding="utf-8")
    overrides = [f"data.dir={work}", "data.train=[identity.json, alpaca_train.json]", "data.val=alpaca_heldout.json",
                 *a.set]
    clock = cpu_clock()
    run = train("sft_identity.yaml", overrides, work / "run", callbacks=(clock,))
    questions = QUESTIONS_EN + QUESTIONS_ZH
    before = base_answers(questions, a.max_new_tokens)
    predictor = Predictor(work / "run", log=lambda *x: None)
    after = [x["answer"] for x in predictor.predict(questions, max_new_tokens=a.max_new_tokens, stream=False)]
    named = named_share
    held_rows = read_conversations(work / "alpaca_heldout.json")
    base_tok = AutoTokenizer.from_pretrained(base_folder())
    base_loss = answer_loss(AutoModelForCausalLM.from_pretrained(base_folder()), base_tok, held_rows, CHATML, 512)
    tuned_loss = answer_loss(predictor.bundle.model, predictor.bundle.tokenizer, held_rows, CHATML, 512)
    save("identity", {
        "command": "python benchmarks/bench_sft.py identity --data ../shared/data/sft " + " ".join(
            f"--set {s}" for s in a.set),
        "recipe": "recipes/sft_identity.yaml", "overrides": overrides,
        "named_share": {"base": {"all": named(before), "en": named(before[:10]), "zh": named(before[10:])},
                        "fine_tuned": {"all": named(after), "en": named(after[:10]), "zh": named(after[10:])}},
        "heldout_alpaca_loss": {"base": base_loss, "fine_tuned": tuned_loss,
                                "relative_change": tuned_loss / base_loss - 1, "rows": a.heldout},
        "answers": [{"question": q, "base": b, "fine_tuned": t} for q, b, t in zip(questions, before, after)],
        "run": {"training_cpu_seconds": clock.seconds, **{k: run[k] for k in (
            "wall_seconds", "train_seconds", "eval_seconds", "resumed_from_step", "steps", "epochs", "tokens_seen",
            "tokens_per_second", "peak_rss_mb", "stop_reason", "eval")}}})


# ---------------------------------------------------------------- sst2 as generation, against the minilm classifier


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_clock():
    """A callback measuring this process's CPU time from the start of the loop to the latest optimizer step (one
    thread: the compute the training needed, whatever else runs on the machine)."""
    from tuneforge.engine.callbacks import Callback

    class CpuClock(Callback):
        seconds, steps = 0.0, 0

        def on_fit_start(self, state) -> None:
            self.start, self.first = cpu_seconds(), state.step

        def on_step_end(self, state) -> None:
            self.seconds, self.steps = cpu_seconds() - self.start, state.step - self.first

    return CpuClock()


def sst2(a) -> None:
    if a.budget:
        return sst2_budget(a)
    work = workdir(a, "sst2")
    sft_clock, calibration, cls_clock = cpu_clock(), cpu_clock(), cpu_clock()
    sft = train("sft_sst2.yaml", [f"data.dir={a.data}", *a.set], work / "sft", callbacks=(sft_clock,))
    # the classifier gets the CPU time the SFT training loop used (a CPU-seconds budget: on a shared machine the
    # wall clock of two runs at different times is not comparable); its steps per CPU second from 40 steps
    train("sst2.yaml", [f"data.dir={a.data}", "train.max_steps=40", "eval.every_steps=1000", "train.threads=1"],
          work / "calibrate", callbacks=(calibration,), fresh=True)
    steps = max(1, int(sft_clock.seconds / (calibration.seconds / calibration.steps)))
    cls = train("sst2.yaml", [f"data.dir={a.data}", f"train.max_steps={steps}", "train.threads=1"], work / "minilm",
                callbacks=(cls_clock,))
    keep = ("wall_seconds", "train_seconds", "eval_seconds", "steps", "epochs", "samples_per_second", "peak_rss_mb")
    save("sst2", {
        "command": "python benchmarks/bench_sft.py sst2 --data ../shared/data/sst2",
        "sft": {"recipe": "recipes/sft_sst2.yaml", "dev_accuracy": sft["eval"]["exact_match"],
                "training_cpu_seconds": sft_clock.seconds, "resumed_from_step": sft["resumed_from_step"],
                "dev_contains_answer": sft["eval"]["contains_answer"], "dev_rows_generated": sft["eval"]["generated"],
                "eval_loss": sft["eval"]["loss"], **{k: sft[k] for k in keep}, "tokens_per_second":
                    sft.get("tokens_per_second")},
        "minilm_classifier": {"recipe": "recipes/sst2.yaml", "max_steps_for_equal_cpu_time": steps,
                              "training_cpu_seconds": cls_clock.seconds,
                              "dev_accuracy": cls["eval"]["accuracy"], **{k: cls[k] for k in keep}}})


def sst2_budget(a) -> None:
    """--budget S: both recipes at once, one process and one thread each, with the same train.time_budget (the
    same wall-clock budget, side by side on the same machine)."""
    work = workdir(a, "sst2_budget")
    runs = {"sft": ("sft_sst2.yaml", []), "minilm": ("sst2.yaml", [])}
    procs = {}
    for name, (recipe, extra) in runs.items():
        sets = [f"data.dir={a.data}", f"train.time_budget={a.budget}", "train.threads=1", *extra, *a.set]
        cmd = [sys.executable, "-m", "tuneforge", "train", str(ROOT / "recipes" / recipe), "--output",
               str(work / name), "--overwrite", "--quiet"] + [x for v in sets for x in ("--set", v)]
        with open(work / f"{name}.log", "w") as err:  # the child keeps its own copy of the handle
            procs[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err), time.perf_counter(), sets)
    ended = {}
    while len(ended) < len(procs):  # each side's own end time
        ended.update({n: time.perf_counter() for n, (p, *_) in procs.items() if n not in ended and p.poll() is not None})
        time.sleep(0.5)
    out = {}
    for name, (proc, started, sets) in procs.items():
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed: see {work / name}.log")
        s = json.loads((work / name / "summary.json").read_text())
        ev = s["eval"]
        out[name] = {"recipe": runs[name][0], "overrides": sets, "wall_seconds": round(ended[name] - started, 1),
                     "dev_accuracy": ev.get("exact_match", ev.get("accuracy")),
                     **{k: s.get(k) for k in ("train_seconds", "eval_seconds", "steps", "epochs", "samples_seen",
                                              "peak_rss_mb", "stop_reason", "time_budget")}}
        print(name, out[name]["dev_accuracy"], out[name]["wall_seconds"], "s", flush=True)
    save("sst2_budget", {"command": f"python benchmarks/bench_sft.py sst2 --data ../shared/data/sst2 --budget {a.budget}",
                         "budget_seconds": a.budget, **out})


# ---------------------------------------------------------------- Chinese


def zh(a) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.predict import Predictor

    work = workdir(a, "zh")
    clock = cpu_clock()
    run = train("sft_zh.yaml", [f"data.dir={a.data}", *a.set], work / "run", callbacks=(clock,))
    # the held-out rows exactly as the run split them (seeded), read back from its data split
    from tuneforge.config import load_config
    from tuneforge.tasks import create_task

    cfg = load_config(work / "run" / "config.yaml")
    _, val, _ = create_task(cfg, lambda *x: None).read_examples("text")
    predictor = Predictor(work / "run", log=lambda *x: None)
    template = predictor.task.template
    base_loss = answer_loss(AutoModelForCausalLM.from_pretrained(base_folder()),
                            AutoTokenizer.from_pretrained(base_folder()), val.inputs, template, cfg.data.max_length)
    tuned_loss = answer_loss(predictor.bundle.model, predictor.bundle.tokenizer, val.inputs, template,
                             cfg.data.max_length)
    save("zh", {"command": "python benchmarks/bench_sft.py zh --data ../shared/data/sft",
                "recipe": "recipes/sft_zh.yaml", "heldout_rows": len(val), "tokens_trained_on": run["tokens_seen"],
                "heldout_loss": {"base": base_loss, "after": tuned_loss, "relative_change": tuned_loss / base_loss - 1},
                "run": {"training_cpu_seconds": clock.seconds, **{k: run[k] for k in (
                    "wall_seconds", "train_seconds", "eval_seconds", "resumed_from_step", "steps",
                    "tokens_per_second", "peak_rss_mb", "eval")}}})


# ---------------------------------------------------------------- time to first step


FIRST_STEP = """
import sys, time, tuneforge.run
from tuneforge.engine.callbacks import Callback
class First(Callback):
    def on_step_end(self, state):
        print("FIRST_STEP", time.time(), flush=True)
        state.should_stop = True
tuneforge.run.train(sys.argv[1], sys.argv[3:], output=sys.argv[2], overwrite=True, quiet=True, callbacks=(First(),))
"""


def first_step(a) -> None:
    work = Path(tempfile.mkdtemp(prefix="sft_first_step-"))
    cache = work / "cache"
    out = {}
    for label in ("empty_cache", "cached"):
        env = {**os.environ, "TUNEFORGE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        started = time.time()
        proc = subprocess.run([sys.executable, "-c", FIRST_STEP, str(ROOT / "recipes" / "sft_identity.yaml"),
                               str(work / label), f"data.dir={a.data}", *a.set], env=env, capture_output=True,
                              text=True)
        stamps = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("FIRST_STEP")]
        if proc.returncode != 0 or not stamps:
            raise SystemExit(proc.stderr[-3000:])
        out[label] = round(stamps[0] - started, 1)
        print(label, out[label], "s", flush=True)
    save("first_step", {"command": "python benchmarks/bench_sft.py first-step --data ../shared/data/sft",
                        "recipe": "recipes/sft_identity.yaml", "overrides": a.set,
                        "seconds_to_first_step": out,
                        "includes": "python start, imports, (GGUF check / conversion), reading and tokenizing 1,090 "
                                    "rows, model load, the base model's answers to the 16 generation samples, "
                                    "one optimizer step (batch 4 x accum 2 packed rows of 512 tokens)"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["identity", "sst2", "zh", "first-step"])
    p.add_argument("--data", required=True, help="../shared/data/sft (identity, zh, first-step) or ../shared/data/sst2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe overrides")
    p.add_argument("--heldout", type=int, default=60, help="identity: Alpaca rows held out")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--budget", type=float, help="sst2: run both side by side with this train.time_budget (s)")
    p.add_argument("--work", help="work folder; running the same command again resumes an interrupted run there")
    a = p.parse_args()
    a.data = str(Path(a.data).resolve())
    {"identity": identity, "sst2": sst2, "zh": zh, "first-step": first_step}[a.which](a)


if __name__ == "__main__":
    main()
