"""A short SST-2 run with TensorBoard and MLflow logging, read back with their own readers (issue 17).

    python benchmarks/trackers_readback.py RUN_DIR    # data: /work/shared/data/sst2"""
import sys
import mlflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tuneforge.run

run = sys.argv[1]
r = tuneforge.run.train("recipes/sst2.yaml", ["data.dir=/work/shared/data/sst2", "data.max_train_samples=640",
                    "train.max_steps=20", "eval.every_steps=10", "data.max_val_samples=200", "train.threads=1",
                    "output.loggers=[jsonl, tensorboard, mlflow]", "output.progress=false", "output.report=false"],
                    output=run, overwrite=True, quiet=True)
acc = EventAccumulator(f"{run}/tensorboard"); acc.Reload()
tags = acc.Tags()["scalars"]
print("tensorboard scalar tags:", tags)
print("tensorboard val accuracy:", [(e.step, round(e.value, 4)) for e in acc.Scalars(next(t for t in tags if t.endswith("accuracy")))])
mlflow.set_tracking_uri(f"sqlite:///{run}/mlflow.db")
df = mlflow.search_runs(search_all_experiments=True)
cols = [c for c in df.columns if c.startswith("metrics.") and "accuracy" in c]
print("mlflow.search_runs:", len(df), "run(s);", df[["run_id", "status"] + cols].to_dict("records"))
