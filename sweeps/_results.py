"""Shared by the sweep scripts: a results file is rewritten atomically after every run."""
from __future__ import annotations

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
