"""Markers of finished steps, so that a cut `make train-tiny` restarts where it stopped.

A step that finished writes a marker holding what its output depends on: its arguments (less
those that only set the pace) and the size and time of its input models' files. Run again with
the same key, it keeps its output, so a restarted `train-tiny` gives what an uncut one gives.
The corpora only grow by appends, so a step that read a corpus before a later append keeps
what it read then, as an uncut run does. Plain Python: make_data.py uses it without torch.
"""
import hashlib
import json
import os
from pathlib import Path


def _stamp(path: Path) -> list:
    """Size and modification time of a file, or of each file in a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]


def step_key(args, inputs=(), pace=("workers", "threads")) -> dict:
    """The key of a step: its parsed arguments, less `pace`, and a stamp of each of `inputs`."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    key = {k: plain(v) for k, v in sorted(vars(args).items()) if k not in pace}
    key["inputs"] = {str(p): _stamp(Path(p)) for p in inputs}
    return key


def done_before(marker: Path, key: dict) -> bool:
    """Whether `marker` records this very step as finished."""
    try:
        return json.loads(marker.read_text()) == key
    except (OSError, ValueError):
        return False


def records_digest(recs) -> list:
    """How many records, and a hash of them: what a step read of a corpus."""
    return [len(recs), hashlib.sha1(json.dumps(recs, sort_keys=True).encode()).hexdigest()]


def clear_done(marker: Path):
    """Forgets a finished step before its output is rewritten, so a cut rewrite is not taken for done."""
    marker.unlink(missing_ok=True)


def mark_done(marker: Path, key: dict):
    """Records the step as finished (written whole or not at all)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(key, indent=1) + "\n")
    os.replace(tmp, marker)


def unfinished_append(corpus: Path, start: int) -> bool:
    """Whether a corpus's training questions past `start` are those of an append cut before its
    end: make_data.py's first call left its marker, its questions end by `start`, and no append
    from `start` on finished."""
    try:
        made = json.loads((corpus / "init.done.json").read_text())
    except (OSError, ValueError):
        return False
    later = [m for m in corpus.glob("train-*.done.json") if int(m.name.split("-")[1].split(".")[0]) >= start]
    return made.get("train", start + 1) <= start and not later
