"""PASS/FAIL lines and the commands the checks run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .config import ENV


class Failed(Exception):
    pass


# -- output and commands ------------------------------------------------------

def title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def passed(text: str) -> None:
    print(f"PASS {text}", flush=True)


def check(condition: object, text: str, detail: object = "") -> None:
    if not condition:
        raise Failed(f"{text}: {detail}" if detail != "" else text)
    passed(text)


def run(*argv: str, ok: bool = True, show: bool = True, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run argv with stdin closed, output merged; shown indented; ok: must exit 0."""
    print(f"$ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**ENV, **(env or {})},
                          timeout=timeout, check=False)
    # dpkg's "(Reading database ... 5%" progress is noise in a log.
    lines = [line for line in done.stdout.splitlines()
             if not (line.startswith("(Reading database ...") and not line.endswith(")"))]
    for line in lines if show else lines[-15:] if done.returncode else []:
        print(f"    | {line}", flush=True)
    if ok and done.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {done.returncode}")
    return done


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
