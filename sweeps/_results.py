"""Shared by the sweep scripts: a results file is rewritten atomically after every run, and read back only if it was
written with the script's current settings."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path


def write_json(path: Path, data: dict, *, indent: int | None = None) -> None:
    """Write `data` as JSON to `path` through a temporary file in the same folder and os.replace, so a reader (or an
    interrupted sweep) sees the old file or the new one, never half of one. indent=None writes it compact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, separators=(",", ":") if indent is None else None)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the results are an ordinary, readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: Path, config: dict) -> dict:
    """The results file at `path`, or an empty one ({"config": config, "runs": []}) if there is none yet.

    A file written with other settings is refused (SystemExit naming the way out), so that a resumed sweep never mixes
    runs of two configurations. One exception: the learning-rate grids may grow (a family whose best lr sat at the
    edge of its grid gets one more value); every other setting must be the one the finished points ran with. The
    returned data carries `config` (the current one)."""
    path = Path(path)
    if not path.exists():
        return {"config": config, "runs": []}
    data = json.loads(path.read_text())
    stored, current = dict(data.get("config", {})), dict(config)
    old_grid, new_grid = stored.pop("lr_grid", {}), current.pop("lr_grid", {})
    if stored != current or any(not set(v) <= set(new_grid.get(k, ())) for k, v in old_grid.items()):
        raise SystemExit(f"{path} was written with another configuration: move it away (or delete it) to start over, "
                         "or restore the settings it records")
    data["config"] = config
    return data


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path`'s sibling .lock file: the workers of one sweep read, claim and write the
    results file under it, one at a time."""
    with open(Path(path).with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a claim whose worker died is released)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
