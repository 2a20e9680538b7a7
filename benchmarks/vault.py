"""What secret redaction costs on a large tool output: ``python -m benchmarks.vault``.

A tool output of ``--mb`` MB (10; printable text, lines of 100 characters) is redacted by
:class:`core.vault.Redactor` with 0 (no redaction: the baseline), 1, 10 and 100 known
values, with no value in the output and with a value every ~10 KB. Printed per case: the
median time of ``--repeat`` runs, ms per MB and MB/s, for the three places a session's
output passes the redactor: the command's text (``SessionSandbox.exec``), an event's payload
(``Redactor.events``: the worker's sink and the supervisor's journal do this), and the
whole command through a local sandbox (``cat`` of a file of that size) with and without
``SessionSandbox``. Figures only, no assertions: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import string
import time
from collections.abc import Callable
from pathlib import Path

from core.events import Event, EventType
from core.vault import Redactor
from sandboxes.base import SessionSandbox
from sandboxes.local import LocalSandbox


def output(mb: float, secret: str | None, every: int = 10_000) -> str:
    """``mb`` MB of text; with ``secret`` planted about every ``every`` characters."""
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + " .,:-_/"
    line = "".join(rng.choice(alphabet) for _ in range(99)) + "\n"
    size = int(mb * 1_000_000)
    text = (line * (size // len(line) + 1))[:size]
    if secret is None:
        return text
    parts = [text[i : i + every] for i in range(0, len(text), every)]
    return secret.join(parts)[:size]


def secrets(n: int) -> dict[str, str]:
    return {f"SECRET_{i}": f"sk-{i:04d}-{random.Random(i).getrandbits(96):024x}" for i in range(n)}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(label: str, seconds: float, mb: float, base: float | None) -> str:
    """One printed line; ``base``: the time it is compared with (printed as a ratio)."""
    seconds = max(seconds, 1e-9)
    ratio = f"  {seconds / base:5.2f}x the base" if base else ""
    return (
        f"{label:<44} {seconds * 1000:8.2f} ms {seconds * 1000 / mb:7.3f} ms/MB "
        f"{mb / seconds:10.0f} MB/s{ratio}"
    )


async def through_sandbox(mb: float, n: int, repeat: int) -> tuple[float, float]:
    """(seconds without, with redaction of ``n`` values) for ``cat`` of an ``mb`` MB file."""
    box = LocalSandbox(output_limit=int(mb * 1_000_000) + 1_000_000)
    await box.start()
    try:
        known = secrets(n)
        Path(box.workdir, "out.txt").write_text(output(mb, next(iter(known.values()))))
        wrapped = SessionSandbox(box, {}, Redactor(known))
        results = []
        for sandbox in (box, wrapped):
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                result = await sandbox.exec("cat out.txt", timeout_s=60)
                times.append(time.perf_counter() - started)
                assert len(result.stdout) > mb * 900_000, "the output was capped"
            results.append(statistics.median(times))
        return results[0], results[1]
    finally:
        await box.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    mb, repeat = args.mb, args.repeat
    print(f"redaction of a {mb:g} MB tool output (median of {repeat})")
    for planted in (False, True):
        print(f"\n-- text, {'a value every ~10 KB' if planted else 'no value in it'}")
        for n in (0, 1, 10, 100):
            known = secrets(n)
            text = output(mb, next(iter(known.values())) if planted and known else None)
            redactor = Redactor(known)
            seconds = timed(lambda r=redactor, t=text: r.text(t), repeat)
            label = f"Redactor.text, {n} values" + (" (no redaction)" if not n else "")
            print(row(label, seconds, mb, None))
    print("\n-- an event holding it (payload walk), no value in it")
    text = output(mb, None)
    for n in (0, 1, 10):
        redactor = Redactor(secrets(n))

        def redact_event(r: Redactor = redactor) -> None:
            event = Event(task_id="t", type=EventType.agent_tool_result, payload={"output": text})
            r.events([event])

        print(row(f"Redactor.events, {n} values", timed(redact_event, repeat), mb, None))
    print("\n-- the whole command: cat of the file in a local sandbox (a value every ~10 KB)")
    without, with_ = asyncio.run(through_sandbox(mb, 10, repeat))
    print(row("LocalSandbox.exec (no redaction)", without, mb, None))
    print(row("SessionSandbox.exec, 10 values", with_, mb, without))


if __name__ == "__main__":
    main()
