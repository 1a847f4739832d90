"""The reference: `moeplane up` on the same manifest, asked the same prompts greedily."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai

from tests.kube.operator_proc import stop_process

PROMPTS = ("hello", "The quick brown fox", "1 2 3 4 5")
MAX_TOKENS = 12


def greedy_answers(base_url: str, model: str, timeout_s: float = 120.0) -> list[str]:
    """Each prompt's greedy completion text, through the official client (no retries)."""
    client = openai.OpenAI(base_url=base_url, api_key="e2e", timeout=timeout_s, max_retries=0)
    try:
        return [
            str(
                client.completions.create(model=model, prompt=p, max_tokens=MAX_TOKENS, temperature=0)
                .choices[0]
                .text
            )
            for p in PROMPTS
        ]
    finally:
        client.close()


def embedded_answers(manifest: Path, model: str, log: Path, timeout_s: float = 300.0) -> list[str]:
    """Start `moeplane up -f manifest`, ask PROMPTS, stop it (SIGINT, as Ctrl-C)."""
    argv = [
        str(Path(sys.executable).parent / "moeplane"),
        "up",
        "-f",
        str(manifest),
        "--port",
        "0",
        "--no-planner",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"OpenAI API\s+(http://\S+/v1)", line)
            if match:
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.wait(1.0):
            assert time.monotonic() < deadline, "moeplane up did not come up:\n" + "".join(lines[-40:])
        assert found, f"moeplane up exited ({proc.poll()}):\n" + "".join(lines[-40:])
        return greedy_answers(found[0], model)
    finally:
        stop_process(proc, signal.SIGINT, grace_s=60)  # Ctrl-C, as a user stops `moeplane up`
        reader.join(timeout=10)
        log.write_text("".join(lines))
