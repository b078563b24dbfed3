"""tuneforge vs the seed-style plain PyTorch loop: EfficientNet-Lite0 on hymenoptera, seconds per epoch and accuracy.

The peer is the classic transfer-learning tutorial loop: torchvision ImageFolder + DataLoader decoding JPEGs
every epoch, RandomResizedCrop(224) + flip, SGD lr 1e-3 momentum 0.9, batch 16, fp32, evaluation each epoch.
Each run is a subprocess; the first epoch (warm-up: caches, allocator) is excluded from s/epoch.

    python benchmarks/bench_image_vs_seed.py --data ../shared/data/hymenoptera --epochs 5
    configs: seed, tuneforge_same (the seed loop's work and hyper-parameters), tuneforge_recipe (the recipe)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
# tuneforge doing the seed loop's work: full fine-tune at 224 px, the same crops, optimizer and batch size.
# Its own speed features stay on (decode-once image cache, bf16 autocast, channels_last).
SAME_AS_SEED = ["train.freeze=null", "data.image_size=224", "data.augment.enabled=true",
                "data.augment.crop_scale=[0.08,1.0]", "train.optimizer=sgd", "train.lr=1e-3", "train.momentum=0.9",
                "train.weight_decay=0.0", "train.schedule=constant", "train.batch_size=16",
                "train.grad_clip=null"]  # the seed loop does not clip
# Transfer-learning practice on top of that: the stem and first two stages (0.3% of the weights, but the most
# expensive layers, at 112 and 56 px) stay frozen, so backward stops before them.
FAST_FINETUNE = ["train.freeze=[conv_stem,bn1,blocks.0,blocks.1]"]
CONFIGS = {"seed": None, "tuneforge_same": SAME_AS_SEED, "tuneforge_fast": SAME_AS_SEED + FAST_FINETUNE,
           "tuneforge_recipe": []}  # recipe = linear probe, cached


def seed_loop(data: Path, epochs: int, threads: int) -> dict:
    import torch
    from torchvision import datasets, transforms

    from tuneforge.config import ModelConfig
    from tuneforge.models import HeadSpec, create_model

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
    tf_train = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    tf_val = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train = datasets.ImageFolder(data / "train", tf_train)
    val = datasets.ImageFolder(data / "val", tf_val)
    tl = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, num_workers=0)
    vl = torch.utils.data.DataLoader(val, batch_size=16, num_workers=0)
    model = create_model(ModelConfig(name="efficientnet-lite0"), HeadSpec(2, train.classes), log=lambda m: None).model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    epoch_s, accs = [], []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        for x, y in tl:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in vl:
                correct += int((model(x).argmax(1) == y).sum())
        epoch_s.append(time.perf_counter() - t)
        accs.append(correct / len(val))
    return {"epoch_seconds": epoch_s, "accuracies": accs}


def tuneforge_run(data: Path, epochs: int, threads: int, sets: list[str]) -> dict:
    from tuneforge.run import train

    # `k=v` strings are typed like the CLI's --set (YAML values: null, [0.08, 1.0], 1e-3)
    r = train(str(HERE.parent / "recipes" / "hymenoptera.yaml"),
              [f"data.dir={data}", f"train.epochs={epochs}", f"train.threads={threads}", *sets],
              output=tempfile.mkdtemp(), overwrite=True, quiet=True)
    lines = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    walls = [x["wall_seconds"] for x in lines]
    epoch_s = [walls[0]] + [b - a for a, b in zip(walls, walls[1:])]
    return {"epoch_seconds": epoch_s, "accuracies": [x["metrics"]["accuracy"] for x in lines],
            "precision": r.summary["precision"], "final_accuracy": r.metrics["accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hymenoptera"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--tf-set", action="append", default=[], help="extra overrides for every tuneforge config")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=str(HERE / "results" / "image_vs_seed.json"))
    p.add_argument("--worker")
    a = p.parse_args()
    if a.worker:
        fn = seed_loop(Path(a.data), a.epochs, a.threads) if a.worker == "seed" else \
            tuneforge_run(Path(a.data), a.epochs, a.threads, a.tf_set)
        fn["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(fn))
        return
    results = {}
    for name in a.configs.split(","):
        sets = [] if name == "seed" else CONFIGS[name] + a.tf_set
        cmd = [sys.executable, __file__, "--worker", name, "--data", a.data, "--epochs", str(a.epochs),
               "--threads", str(a.threads)] + [x for kv in sets for x in ("--tf-set", kv)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(line[0][7:])
        r = results[name]
        r["steady_epoch_seconds"] = sum(r["epoch_seconds"][1:]) / max(len(r["epoch_seconds"]) - 1, 1)
        r["best_accuracy"] = max(r["accuracies"])
        print(f"{name}: {r}", flush=True)
    print(f"\n{'run':<18}{'s/epoch':>9}{'best acc':>10}{'final acc':>11}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<18}{r['steady_epoch_seconds']:>9.1f}{r['best_accuracy']:>10.4f}{r['accuracies'][-1]:>11.4f}"
              f"{r['peak_rss_mb']:>13.0f}")
    if "seed" in results:
        for name in [n for n in results if n != "seed"]:
            print(f"{name} / seed seconds per epoch: "
                  f"{results[name]['steady_epoch_seconds'] / results['seed']['steady_epoch_seconds']:.2f}x")
    Path(a.out).write_text(json.dumps({"date": str(date.today()), "command": " ".join(sys.argv),
                                       "results": results}, indent=2))


if __name__ == "__main__":
    main()
