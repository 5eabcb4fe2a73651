"""`vqct bench suite`: the GPU machine's benchmarks in one prepared command (`make bench-gpu`).

A lent GPU machine is held for minutes, so everything it should measure runs from one command,
most wanted first, each benchmark in its own process (a crash or a hang costs that one alone)
under its own time limit and a deadline for the whole suite. Each finished step appends one
JSON line to --out at once, so what the machine managed before it went away is kept; `--only`
reruns the steps that failed. The first line of each run names the machine and the versions
every figure depends on. `--quick` runs the same steps at CPU sizes, to check the suite itself
where there is no GPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vqct.errors import UserError
from vqct.records.command_output import last_json


# A source checkout's (the suite runs from one: `make bench-gpu`), not an installed package's.
KERNEL_TESTS = Path(__file__).resolve().parents[3] / "tests" / "test_kernels.py"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]  # run as `python -m ...`
    timeout_s: int


def _step_bench(quick: bool, batch: int, *flags: str) -> list[str]:
    """`vqct bench step` of the paper model at 256 px (the tiny model at 32 px with --quick)."""
    model = (["data.image_size=32", "data.batch_size=2"] if quick else
             ["model=paper", "data.image_size=256", f"data.batch_size={batch}", "trainer.use_gpu=true"])
    length = ["--steps", "1", "--warmup", "0"] if quick else ["--steps", "10", "--warmup", "3"]
    return ["vqct", "bench", "step", "vqgan_shapes", *model, *flags, *length]


def steps(quick: bool) -> list[Step]:
    """Issue 32's list, most wanted first: the kernels' correctness, the kernels' speed, the
    tokenizer step, the generator, and last the speed options (torch.compile is slow to start)."""
    lookup = ["--shapes", "256,1024,8", "--reps", "1"] if quick else []
    gcn = ["--graphs", "300,2000", "--reps", "1"] if quick else []
    generate = ["--steps", "1", "--warmup", "0", "--samples", "1"] if quick else []
    # quick: generator_shapes on an 8 x 8 grid; recipes train on the CPU unless told otherwise
    scenes = [] if quick else ["generator_scenes", "trainer.use_gpu=true", "--grid", "16"]
    kernel_tests = ["pytest", "-q", "-p", "no:cacheprovider", str(KERNEL_TESTS)]
    return [
        Step("kernel-tests", kernel_tests + (["-k", "lookup and not topk"] if quick else []), 240),
        Step("lookup-fp32", ["vqct", "bench", "lookup", "--dtype", "fp32", *lookup], 180),
        Step("lookup-bf16", ["vqct", "bench", "lookup", "--dtype", "bf16", *lookup], 180),
        Step("gcn", ["vqct", "bench", "gcn", *gcn], 120),
        Step("step-plain-b8", _step_bench(quick, 8, "--baseline", "plain"), 150),
        Step("step-plain-b32", _step_bench(quick, 32, "--baseline", "plain"), 180),
        Step("step-precision-b32", _step_bench(quick, 32, "--precisions", "fp32,bf16"), 180),
        Step("step-precision-b8", _step_bench(quick, 8, "--precisions", "fp32,bf16"), 150),
        Step("step-zero2-b8", _step_bench(quick, 8, "trainer.zero_when_alone=true", "--baseline", "plain"), 150),
        Step("generate", ["vqct", "bench", "generate", *scenes, "--codes", "1024", *generate], 150),
        Step("generate-vqct", ["vqct", "bench", "generate", *scenes, "--adj-noun", "512,512,3", *generate], 150),
        Step("step-options-b32", _step_bench(quick, 32, "--precisions", "bf16", "--baseline", "variants",
                                             "--vary", "trainer.channels_last=true", "--vary", "optim.adam=fused",
                                             "--vary", "trainer.compile=true"), 300),
    ]


def select(all_steps: list[Step], only: str | None) -> list[Step]:
    if not only:
        return all_steps
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = [s.name for s in all_steps]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"--only {only!r}: no step named {', '.join(unknown) or '(none)'}; "
                        f"the steps are {', '.join(known)}")
    return [s for s in all_steps if s.name in names]


def _version(distribution: str) -> str | None:
    # from the installed metadata: importing DeepSpeed would build its ops first (minutes)
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """What every figure depends on: device, driver, and the versions of what ran it."""
    import torch

    info = {"step": "machine", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
            "deepspeed": _version("deepspeed"), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    else:
        from vqct.bench.measure import device_name

        info["device"] = device_name(torch.device("cpu"))
    return info


def run_step(step: Step, time_left: float) -> dict:
    """One benchmark in its own process; its last JSON line, or why there is none."""
    limit = max(1, min(step.timeout_s, int(time_left)))
    start = time.monotonic()
    print(f"bench suite: {step.name} (at most {limit} s)", file=sys.stderr, flush=True)
    record = {"step": step.name, "command": "python -m " + shlex.join(step.argv)}
    try:
        # stderr passes through: the benchmark's own progress is the suite's progress
        proc = subprocess.run([sys.executable, "-m", *step.argv], stdout=subprocess.PIPE, text=True,
                              timeout=limit)
        record["rc"], out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        record["rc"], out = "timeout", exc.stdout or ""
        out = out.decode() if isinstance(out, bytes) else out
    record["wall_s"] = round(time.monotonic() - start, 1)
    try:
        result = last_json(out)
    except ValueError:  # nothing printed, or not JSON (pytest): the tail says what happened
        result = None
    if result is not None:
        record["result"] = result
    else:
        record["output_tail"] = out[-2000:]
    return record


def run_suite(out: str | Path, quick: bool, only: str | None, deadline_s: float) -> dict:
    chosen, out = select(steps(quick), only), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failed = []
    with open(out, "a") as f:
        def write(record):
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

        write(machine())
        for step in chosen:
            left = deadline_s - (time.monotonic() - started)
            record = run_step(step, left) if left >= 1 else {"step": step.name, "rc": "skipped: past --deadline-s"}
            write(record)
            if record["rc"] != 0:
                failed.append(step.name)
    return {"bench": "suite", "out": str(out), "steps": [s.name for s in chosen], "failed": failed,
            "rerun": f"--only {','.join(failed)}" if failed else None,
            "wall_s": round(time.monotonic() - started, 1)}
