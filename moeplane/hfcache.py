"""`python -m moeplane.hfcache fetch [--light] hf://ORG/REPO[@REV]`: fill the Hugging Face cache.

The init container of every pod that reads an hf:// location runs this (operator/builders/
storage.py). It uses only `huggingface_hub` (no torch), with the cache at `$HF_HOME`:

- the cache already holds the revision: a marker written after an earlier complete download says
  so, and the snapshot resolves offline; it returns at once, without contacting the Hub;
- `HF_HUB_OFFLINE` is set: the snapshot must already be in the cache (a pre-filled claim); a miss
  exits 1 naming the location and the cache;
- otherwise it downloads the revision (`snapshot_download`, which resumes and skips files it has)
  and writes the marker.

`--light` fetches only what the frontend and the pool sidecar read: configs, tokenizer files and
remote code, not the weights. A complete fetch satisfies a light one.

Exit status: 0 when the cache holds the revision, 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from moeplane.api.locations import LocationError, LocationKind, parse_location

# Configs, tokenizers (sentencepiece, tiktoken, BPE merges/vocab) and remote code: everything but
# the weights.
LIGHT_PATTERNS = ("*.json", "*.model", "*.tiktoken", "*.txt", "*.py", "tokenizer*", "*.jinja")
MARKER_DIR = "moeplane-fetched"
_TRUE = {"1", "true", "yes", "on"}


class FetchError(RuntimeError):
    """The cache cannot hold the revision; the message names the location and the cache."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def marker(home: Path, repo: str, revision: str | None, light: bool) -> Path:
    """The file that says a fetch of (repo, revision) completed (`light`: the light file set)."""
    name = f"{repo.replace('/', '--')}@{revision or 'default'}.{'light' if light else 'full'}"
    return home / MARKER_DIR / name


def _local_snapshot(repo: str, revision: str | None, light: bool) -> Path | None:
    """The cached snapshot of the revision, resolved without the network; None on a miss."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(repo, revision=revision, local_files_only=True, allow_patterns=_patterns(light))
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def _patterns(light: bool) -> list[str] | None:
    return list(LIGHT_PATTERNS) if light else None


def fetch(uri: str, light: bool) -> tuple[Path, str]:
    """(snapshot path, what happened: "cached", "offline" or "downloaded"); FetchError otherwise.

    huggingface_hub reads HF_HOME and HF_HUB_OFFLINE from the environment when it is imported, so
    both come from this process's environment (the init container's)."""
    try:
        loc = parse_location(uri)
    except LocationError as exc:
        raise FetchError(str(exc)) from None
    if loc.kind is not LocationKind.HF:
        raise FetchError(f"{uri}: not a Hugging Face location (hf://ORG/REPO[@REVISION])")
    home_value = os.environ.get("HF_HOME", "")
    if not home_value:
        raise FetchError(f"{uri}: HF_HOME is not set; the cache volume's mount path belongs there")
    home = Path(home_value)
    done = [marker(home, loc.repo, loc.revision, False)]
    if light:
        done.append(marker(home, loc.repo, loc.revision, True))
    if any(m.exists() for m in done):
        snapshot = _local_snapshot(loc.repo, loc.revision, light)
        if snapshot is not None:
            return snapshot, "cached"
    if _offline():
        snapshot = _local_snapshot(loc.repo, loc.revision, light)
        if snapshot is None:
            raise FetchError(
                f"{uri} is not in the Hugging Face cache at {home} and HF_HUB_OFFLINE is set: fill the "
                "cache first (e.g. `hf download` into the claim of spec.model.hfCache) or unset it"
            )
        return snapshot, "offline"
    from huggingface_hub import HfApi, snapshot_download

    try:
        # Ask the Hub first: snapshot_download alone falls back to a (possibly partial) cached
        # snapshot when the Hub cannot be reached, which must not be marked complete.
        HfApi().repo_info(loc.repo, revision=loc.revision)
        path = Path(snapshot_download(loc.repo, revision=loc.revision, allow_patterns=_patterns(light)))
    except Exception as exc:  # the Hub's errors (auth, missing repo or revision, network) all end here
        raise FetchError(
            f"{uri}: download into the Hugging Face cache at {home} failed: {type(exc).__name__}: {exc}"
        ) from None
    done[-1].parent.mkdir(parents=True, exist_ok=True)
    done[-1].write_text(f"{path}\n")
    return path, "downloaded"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeplane.hfcache", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="make sure the Hugging Face cache holds a revision")
    p.add_argument("--light", action="store_true", help="configs and tokenizer only, not the weights")
    p.add_argument("uri", help="hf://ORG/REPO[@REVISION]")
    args = parser.parse_args(argv)
    try:
        path, how = fetch(args.uri, args.light)
    except FetchError as exc:
        print(f"moeplane hfcache: {exc}", file=sys.stderr)
        return 1
    print(f"{args.uri}: {how} at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
