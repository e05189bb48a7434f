"""The generation pipeline: records → jobs → backend → parse/validate/check → journal → LLaVA JSON.

Contract: `plan_jobs(records, settings)` fixes, from the seed alone, which response types each image gets
(`per_image` distinct types drawn with the `mix` weights) and each job's seed. `run(...)` executes the jobs
not yet in the journal on `workers` threads, commits every finished job (sample or reject) to the journal
from the main thread, then rebuilds the output from the journal in plan order, de-duplicated, and writes
it atomically with a stats file beside it. So the output depends only on the inputs and settings, never on
thread timing or on how many times the run was killed and resumed.

Jobs whose backend gave up after retries are not journaled: they count as `backend_error` now and are
retried by the next run. A `DatagenError` from the backend (bad key, unknown model) stops the run at once.
Records from the synthetic world (boxes named "colour shape") have every answer confirmed by the checker;
a false claim rejects the sample as `contradicts_scene`.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import Backend, Request, record_scene
from .checker import check_turns
from .journal import Journal
from .parse import Rejected, dedup_key, make_sample, parse_response
from .progress import Progress
from .prompts import RTYPES, build_messages, symbolic_context
from .records import DatagenError, ImageRecord
from .retry import GaveUp


@dataclass(frozen=True)
class Settings:
    """What decides the output; stored in the journal header so a resume cannot silently change it."""

    mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RTYPES, 1.0))
    per_image: int = 1
    seed: int = 0
    shots: int = 2
    dedup: str = "global"  # "global" | "image" | "off"
    check_scenes: bool = True

    def __post_init__(self) -> None:
        bad = set(self.mix) - set(RTYPES)
        if bad:
            raise DatagenError(f"unknown response type(s) {', '.join(sorted(bad))} in --mix; use {', '.join(RTYPES)}")
        positive = [t for t, w in self.mix.items() if w > 0]
        if any(w < 0 for w in self.mix.values()) or not positive:
            raise DatagenError("--mix weights must be >= 0 with at least one > 0")
        if not 1 <= self.per_image <= len(positive):
            raise DatagenError(f"--per-image must be 1..{len(positive)} (the types with weight > 0)")
        if self.dedup not in ("global", "image", "off"):
            raise DatagenError("--dedup must be global, image or off")


@dataclass(frozen=True)
class Job:
    id: str
    record: ImageRecord
    rtype: str
    seed: int


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def plan_jobs(records: list[ImageRecord], settings: Settings) -> list[Job]:
    """Jobs in output order: per image, `per_image` distinct types drawn by weight (seeded per image)."""
    jobs = []
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DatagenError(f"image id {r.id!r} appears twice in the input; ids must be unique")
        seen.add(r.id)
        rng = random.Random(_seed("mix", settings.seed, r.id))
        pool = {t: w for t, w in settings.mix.items() if w > 0}
        chosen = []
        for _ in range(settings.per_image):
            t = rng.choices(list(pool), weights=list(pool.values()))[0]
            chosen.append(t)
            del pool[t]
        for t in sorted(chosen, key=RTYPES.index):
            jobs.append(Job(f"{r.id}-{t}", r, t, _seed("job", settings.seed, r.id, t)))
    return jobs


def _execute(job: Job, backend: Backend, settings: Settings) -> dict:
    """Run one job to a journal entry (sample or reject). GaveUp and DatagenError propagate."""
    messages = tuple(build_messages(job.rtype, symbolic_context(job.record), settings.shots))
    text = backend.complete(Request(job.rtype, job.record, messages, job.seed))
    try:
        turns = parse_response(job.rtype, text)
        scene = record_scene(job.record)
        if settings.check_scenes and scene is not None:
            result = check_turns(scene, turns, require_claims=backend.name == "teacher")
            if not result.ok:
                raise Rejected("contradicts_scene", "; ".join(result.errors)[:200])
    except Rejected as e:
        return {"job": job.id, "reject": e.reason, "detail": e.detail}
    return {"job": job.id, "sample": make_sample(job.record, job.rtype, turns, job.seed)}


def _outcome(entry: dict) -> str:
    return "ok" if "sample" in entry else entry["reject"]


_WORKER: tuple = ()  # (backend, settings) in a process-pool worker


def _init_worker(backend: Backend, settings: Settings) -> None:
    global _WORKER
    _WORKER = (backend, settings)


def _execute_or_none(job: Job, backend: Backend, settings: Settings) -> dict | None:
    """`_execute`, with None when the backend gave up (pickling GaveUp across processes is not worth it)."""
    try:
        return _execute(job, backend, settings)
    except GaveUp:
        return None


def _execute_in_worker(job: Job) -> dict | None:
    """`_execute_or_none` in a worker process."""
    return _execute_or_none(job, *_WORKER)


def _commit_in_batches(entries: Iterable[dict | None], journal: Journal, progress: Progress, batch: int) -> int:
    """Journal finished entries `batch` at a time, in the order given (None: the backend gave up); returns
    how many gave up."""
    failed, buf = 0, []
    for entry in entries:
        if entry is None:
            failed += 1
            progress.update("backend_error")
            continue
        buf.append(entry)
        progress.update(_outcome(entry))
        if len(buf) >= batch:
            journal.commit(buf)
            buf = []
    journal.commit(buf)
    return failed


def _execute_processes(pending: list[Job], backend: Backend, settings: Settings, journal: Journal, progress: Progress,
                       workers: int, batch: int) -> int:
    """CPU-bound backends (the teacher): jobs in worker processes, results committed here in plan order."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(backend, settings)) as pool:
        return _commit_in_batches(pool.map(_execute_in_worker, pending, chunksize=64), journal, progress, batch)


def execute_jobs(jobs: list[Job], backend: Backend, settings: Settings, journal: Journal, progress: Progress,
                 workers: int = 1, batch: int = 1) -> int:
    """Run the jobs not in the journal; returns how many failed after retries (left for the next run).

    I/O-bound backends run on `workers` threads; a backend with `cpu_bound = True` runs in `workers`
    processes instead (threads would only take turns holding the GIL)."""
    pending = [j for j in jobs if j.id not in journal.done]
    failed = 0
    if workers > 1 and getattr(backend, "cpu_bound", False) and len(pending) > 256:
        return _execute_processes(pending, backend, settings, journal, progress, workers, batch)
    if workers <= 1:
        return _commit_in_batches((_execute_or_none(job, backend, settings) for job in pending), journal, progress,
                                  batch)
    todo = iter(pending)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datagen") as pool:
        running: set[cf.Future] = set()
        try:
            while True:
                while len(running) < workers * 2 and (job := next(todo, None)) is not None:
                    running.add(pool.submit(_execute, job, backend, settings))
                if not running:
                    break
                finished, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    try:
                        entry = fut.result()
                    except GaveUp:
                        failed += 1
                        progress.update("backend_error")
                        continue
                    journal.commit([entry])
                    progress.update(_outcome(entry))
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    return failed


def assemble(jobs: list[Job], journal: Journal, settings: Settings) -> tuple[list[dict], Counter]:
    """Samples in plan order, de-duplicated; and the reject counts by reason."""
    samples, rejects, seen = [], Counter(), set()
    for job in jobs:
        entry = journal.done.get(job.id)
        if entry is None:
            continue
        if "reject" in entry:
            rejects[entry["reject"]] += 1
            continue
        s = entry["sample"]
        if settings.dedup != "off":
            key = dedup_key(s, per_image=settings.dedup == "image")
            if key in seen:
                rejects["duplicate"] += 1
                continue
            seen.add(key)
        samples.append(s)
    return samples, rejects


def write_json(path: Path, data: object, indent: int | None = None) -> None:
    """Write JSON atomically: a temp file, fsync, rename. Lists get one item per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if isinstance(data, list):  # one item per line: readable, diffable, and the fast C encoder
            fh.write("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in data) + "\n]\n")
        else:
            fh.write(json.dumps(data, ensure_ascii=False, indent=indent))  # dumps: the C encoder when indent=None
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sidecar(out: Path, what: str) -> Path:
    """`instruct.json` → `instruct.<what>`."""
    return out.with_name(f"{out.stem}.{what}")


def run(records: list[ImageRecord], backend: Backend, settings: Settings, out: Path, *, workers: int = 1,
        restart: bool = False, progress: bool = True, split: bool = False, batch: int = 1,
        extra_stats: dict | None = None) -> dict:
    """Generate, journal and write `out` (+ `<stem>.stats.json`, and per-type files with `split`)."""
    t0 = time.monotonic()
    jobs = plan_jobs(records, settings)
    # What must not change between a run and its resume: the settings, the backend and model, the input.
    inputs = hashlib.sha256("\n".join(f"{r.id}\t{r.image}" for r in records).encode()).hexdigest()[:16]
    settings_doc = asdict(settings) | {"backend": getattr(backend, "identity", backend.name),
                                       "n_records": len(records), "records_sha256": inputs}
    with Journal(sidecar(out, "journal.jsonl"), settings_doc, restart=restart) as journal:
        already = sum(1 for j in jobs if j.id in journal.done)
        bar = Progress("generate", len(jobs), already, enabled=progress)
        failed = execute_jobs(jobs, backend, settings, journal, bar, workers=workers, batch=batch)
        bar.finish()
        samples, rejects = assemble(jobs, journal, settings)
    write_json(out, samples)
    by_type = Counter(s["id"].rsplit("-", 1)[-1] for s in samples)
    if split:
        for t in RTYPES:
            write_json(sidecar(out, f"{t}.json"), [s for s in samples if s["id"].endswith("-" + t)])
    stats = {
        "backend": backend.name, "planned": len(jobs), "resumed_from_journal": already,
        "accepted": len(samples), "by_type": {t: by_type.get(t, 0) for t in RTYPES},
        "rejected": dict(sorted(rejects.items())), "unfinished": failed, "seconds": round(time.monotonic() - t0, 3),
    } | (extra_stats or {})
    write_json(sidecar(out, "stats.json"), stats, indent=1)
    return stats
