"""torchrun entry point for tests/test_distributed.py: the tuneforge CLI, plus a record of the file-system writes
this rank attempts under TUNEFORGE_TEST_WATCH (a Python audit hook: open for writing, mkdir, rename, remove, ...),
written as JSON to TUNEFORGE_TEST_WRITES.<rank> when the process exits."""
from __future__ import annotations

import atexit
import json
import os
import sys

WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree", "os.symlink",
                "os.link", "os.chmod", "os.utime")


def _writing(event: str, args: tuple) -> str | None:
    """The path a write-like audit event touches, or None."""
    if event == "open":
        path, mode, flags = args
        if isinstance(mode, str):
            return path if any(c in mode for c in "wax+") else None
        return path if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) else None
    return args[0] if event in WRITE_EVENTS else None


def watch(root: str, out: str) -> None:
    seen: list[str] = []

    def hook(event: str, args: tuple) -> None:
        path = _writing(event, args)
        if not isinstance(path, (str, bytes, os.PathLike)) or os.fsdecode(path) == out:  # not the record itself
            return
        if os.path.abspath(os.fsdecode(path)).startswith(root):
            seen.append(f"{event} {os.fsdecode(path)}")

    sys.addaudithook(hook)
    atexit.register(lambda: open(out, "w").write(json.dumps(seen)))


if __name__ == "__main__":
    if os.environ.get("TUNEFORGE_TEST_WATCH"):
        watch(os.path.abspath(os.environ["TUNEFORGE_TEST_WATCH"]),
              f"{os.environ['TUNEFORGE_TEST_WRITES']}.{os.environ.get('RANK', '0')}")
    from tuneforge.cli import main

    sys.exit(main())
