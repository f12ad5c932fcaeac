"""Kill-and-resume benchmark: SIGKILL `preprocess`, `heatmaps`, `predict` and `train` mid-run, resume, compare.

For each scenario a reference run writes OUT uninterrupted (then OUT is moved aside, so every
run sees the same absolute paths); each trial starts the same command, kills it with SIGKILL at
a random point (mostly after a random number of finished units, sometimes at a random time), runs the resume
command to completion and compares OUT with the reference: every file byte for byte, except
heatmap NPZs (arrays exactly; their meta without the preprocessed images' modification times),
per-exam result records (without their fingerprint, which holds file times) and training
metrics (without the ``seconds`` column). It also checks that no temporary file (``.bstmp-*``)
is left anywhere under OUT.

    python benchmarks/kill_resume.py --kills 24 --out benchmarks/results/kill_resume.json

Writes a JSON summary (per scenario: kills, how many landed mid-work, identical outputs,
leftover temp files, seconds). tests/hardening/test_kill_resume.py runs a few trials of the same
scenarios.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
CLI = [sys.executable, "-c", "from breastscreen.cli import main; main()"]


def run_cli(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``breastscreen ARGS`` in a fresh process to completion."""
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout)


@dataclass
class Scenario:
    """One command to interrupt: its arguments, how to resume it, how far it got, what must match."""

    name: str
    prepare: Callable[[Path], None]
    command: Callable[[Path, Path], list[str]]
    resume: Callable[[Path, Path], list[str]]
    units: Callable[[Path], int]
    total_units: int
    skip_files: tuple[str, ...] = ()
    csv_drop_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Command for a run killed before it saved anything resumable (training before its first epoch).
    restart: Callable[[Path, Path], list[str]] | None = None


# --------------------------------------------------------------------------- inputs


def _cohort(work: Path, n: int, seed: int = 11) -> Path:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    out = work / f"cohort{n}"
    if not out.exists():
        generate_mammo_cohort(out, n_exams=n, seed=seed, scale=0.125, fmt="png")
    return out


def _preprocessed(work: Path, n: int) -> Path:
    pre = work / f"pre{n}"
    if not (pre / "manifest.jsonl").exists():
        res = run_cli(["preprocess", _cohort(work, n) / "manifest.jsonl", "--out", pre, "--scale", "0.125"])
        if res.returncode != 0:
            raise RuntimeError(f"preprocessing the benchmark cohort failed: {res.stderr[-500:]}")
    return pre


def _count(pattern: str) -> Callable[[Path], int]:
    return lambda out: sum(1 for p in out.glob(pattern) if p.is_file() and not p.name.startswith("."))


def _metric_rows(out: Path) -> int:
    try:
        return max(0, len((out / "metrics.csv").read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def _training_inputs(work: Path) -> None:
    _preprocessed(work, 6)
    _preprocessed(work, 4)


def scenarios(work: Path) -> dict[str, Scenario]:
    """The four interrupted commands, on small synthetic cohorts (CPU, seconds each)."""
    def train_args(work: Path, out: Path) -> list[str]:
        return ["train", "breast", "-m", _preprocessed(work, 6) / "manifest.jsonl", "-v",
                _preprocessed(work, 4) / "manifest.jsonl", "-o", out, "model=nyu-viewwise-image",
                "model_args.num_filters=4", "epochs=4", "batch_size=2", "seed=3", "device=cpu"]

    return {
        "preprocess": Scenario(
            "preprocess", lambda w: _cohort(w, 8),
            lambda w, o: ["preprocess", _cohort(w, 8) / "manifest.jsonl", "--out", o, "--scale", "0.25"],
            lambda w, o: ["preprocess", _cohort(w, 8) / "manifest.jsonl", "--out", o, "--scale", "0.25", "--resume"],
            _count("images/*_breastmask.png"), 32),
        "heatmaps": Scenario(
            "heatmaps", lambda w: _preprocessed(w, 4),
            lambda w, o: ["heatmaps", _preprocessed(w, 4) / "manifest.jsonl", "--model", "demo-patch", "--out", o,
                          "--device", "cpu", "--images-per-chunk", "2"],
            lambda w, o: ["heatmaps", _preprocessed(w, 4) / "manifest.jsonl", "--model", "demo-patch", "--out", o,
                          "--device", "cpu", "--images-per-chunk", "2", "--resume"],
            _count("*.npz"), 16),
        "predict": Scenario(
            "predict", lambda w: _cohort(w, 4),
            lambda w, o: ["predict", _cohort(w, 4) / "manifest.jsonl", "--model", "demo-breast-heatmaps", "--out", o,
                          "--device", "cpu", "--tta", "2"],
            lambda w, o: ["predict", _cohort(w, 4) / "manifest.jsonl", "--model", "demo-breast-heatmaps", "--out", o,
                          "--device", "cpu", "--tta", "2", "--resume"],
            lambda o: (_count("preprocessed/images/*_breastmask.png")(o) + _count("heatmaps/*.npz")(o)
                       + _count("exam_results/*.json")(o)), 36),
        "train": Scenario(
            "train", _training_inputs,
            train_args, lambda w, o: ["train", "breast", "--resume", o],
            _metric_rows, 4, skip_files=("state.pt",), csv_drop_columns={"metrics.csv": ("seconds",)},
            restart=lambda w, o: train_args(w, o) + ["--overwrite"]),
    }


# --------------------------------------------------------------------------- comparing outputs


def _csv_without(data: bytes, drop: tuple[str, ...]) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    keep = [i for i, c in enumerate(rows[0]) if c not in drop] if rows else []
    return [[r[i] for i in keep if i < len(r)] for r in rows]


def _npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    meta.pop("image_mtime_ns", None)
    return arrays, meta


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def compare(ref: Path, out: Path, scenario: Scenario) -> list[str]:
    """Differences between two output folders (see the module doc for what is compared how)."""
    def files(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()
                and p.name not in scenario.skip_files and p.name != "breastscreen-error.log"}

    a, b = files(ref), files(out)
    diffs = [f"only in reference: {k}" for k in sorted(set(a) - set(b))]
    diffs += [f"only after resume: {k}" for k in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        pa, pb = a[key], b[key]
        if key.endswith(".npz"):
            (xa, ma), (xb, mb) = _npz(pa), _npz(pb)
            if ma != mb or xa.keys() != xb.keys() or any(not np.array_equal(xa[k], xb[k]) for k in xa):
                diffs.append(f"differs: {key}")
        elif key.endswith(".safetensors"):
            ta, tb = _safetensors(pa), _safetensors(pb)
            if ta.keys() != tb.keys() or any(not np.array_equal(ta[k], tb[k]) for k in ta):
                diffs.append(f"differs: {key}")
        elif key.startswith("exam_results/"):
            ra, rb = json.loads(pa.read_text()), json.loads(pb.read_text())
            ra.pop("fingerprint", None)
            rb.pop("fingerprint", None)
            if ra != rb:
                diffs.append(f"differs: {key}")
        elif Path(key).name in scenario.csv_drop_columns:
            drop = scenario.csv_drop_columns[Path(key).name]
            if _csv_without(pa.read_bytes(), drop) != _csv_without(pb.read_bytes(), drop):
                diffs.append(f"differs: {key}")
        elif pa.read_bytes() != pb.read_bytes():
            diffs.append(f"differs: {key}")
    return diffs


def leftover_temp_files(out: Path) -> list[str]:
    """Temporary files of killed processes still present under ``out``."""
    return [str(p.relative_to(out)) for p in out.rglob(".bstmp-*")]


# --------------------------------------------------------------------------- one trial


def kill_at(args: list[str], out: Path, units: Callable[[Path], int], target: int | None, at_seconds: float | None,
            timeout: float = 600) -> dict:
    """Start the command; SIGKILL it once ``units(out) >= target`` (or after ``at_seconds``)."""
    proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    start = time.perf_counter()
    killed = False
    done_at_kill = 0
    while proc.poll() is None and time.perf_counter() - start < timeout:
        done = units(out) if out.exists() else 0
        if (target is not None and done >= target) or (at_seconds is not None and time.perf_counter() - start >= at_seconds):
            proc.send_signal(signal.SIGKILL)
            killed = True
            done_at_kill = done
            break
        time.sleep(0.02)
    proc.wait()
    return {"killed": killed, "units_at_kill": done_at_kill, "seconds_at_kill": round(time.perf_counter() - start, 2),
            "exit": proc.returncode}


def trial(work: Path, scenario: Scenario, ref: Path, rng: random.Random, ref_seconds: float) -> dict:
    """Kill once at a random point, resume, compare with the reference (the reference must exist).

    Five kills in six come after a random number of finished units (mid-work); the others at a
    random time between 15 % and 95 % of the reference run's duration, start-up included (on a
    busy machine that is often still during start-up).
    """
    out = work / f"out-{scenario.name}"
    shutil.rmtree(out, ignore_errors=True)
    if rng.random() < 5 / 6:
        info = kill_at(scenario.command(work, out), out, scenario.units, rng.randint(1, scenario.total_units - 1), None)
    else:
        info = kill_at(scenario.command(work, out), out, scenario.units, None,
                       rng.uniform(0.15, 0.95) * ref_seconds)
    res = run_cli(scenario.resume(work, out) if out.exists() else scenario.command(work, out))
    info["restarted"] = False
    if res.returncode != 0 and scenario.restart is not None and "cannot resume" in res.stderr:
        # `train --resume` needs a finished epoch; before that the documented way on is to start again.
        res = run_cli(scenario.restart(work, out))
        info["restarted"] = True
    info["resume_exit"] = res.returncode
    info["temp_files_left"] = leftover_temp_files(out)
    info["differences"] = compare(ref, out, scenario) if res.returncode == 0 else [f"resume failed: {res.stderr[-400:]}"]
    info["identical"] = not info["differences"] and not info["temp_files_left"]
    return info


def reference(work: Path, scenario: Scenario) -> tuple[Path, float]:
    """Run ``scenario`` uninterrupted at the trial's OUT path, move the result aside; (folder, seconds)."""
    scenario.prepare(work)
    out = work / f"out-{scenario.name}"
    ref = work / f"ref-{scenario.name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_cli(scenario.command(work, out))
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"reference run of {scenario.name} failed ({res.returncode}): {res.stderr[-800:]}")
    out.rename(ref)
    return ref, seconds


def main() -> None:
    """Run the benchmark and write its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24, help="kills in total, spread over the scenarios")
    parser.add_argument("--scenarios", default="preprocess,heatmaps,predict,train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kill_resume.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    names = [s for s in args.scenarios.split(",") if s]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bs-kill-") as tmp:
        work = Path(tmp)
        all_scenarios = scenarios(work)
        for i, name in enumerate(names):
            scenario = all_scenarios[name]
            t0 = time.perf_counter()
            ref, ref_seconds = reference(work, scenario)
            n = args.kills // len(names) + (1 if i < args.kills % len(names) else 0)
            trials = []
            for k in range(n):
                trials.append(trial(work, scenario, ref, rng, ref_seconds))
                print(f"{name} kill {k + 1}/{n}: {trials[-1]['units_at_kill']} units done at the kill, "
                      f"identical={trials[-1]['identical']}", flush=True)
            results[name] = {
                "reference_seconds": round(ref_seconds, 1),
                "kills": len(trials),
                "killed_before_the_end": sum(t["killed"] for t in trials),
                "killed_after_some_units": sum(t["killed"] and t["units_at_kill"] > 0 for t in trials),
                "identical_after_resume": sum(t["identical"] for t in trials),
                "restarted_before_first_save": sum(t["restarted"] for t in trials),
                "temp_files_left": sum(len(t["temp_files_left"]) for t in trials),
                "seconds": round(time.perf_counter() - t0, 1),
                "trials": trials,
            }
    summary = {"kills": sum(r["kills"] for r in results.values()),
               "identical_after_resume": sum(r["identical_after_resume"] for r in results.values()),
               "temp_files_left": sum(r["temp_files_left"] for r in results.values()),
               "python": sys.version.split()[0], "scenarios": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['identical_after_resume']}/{summary['kills']} resumed runs identical to the reference; "
          f"{summary['temp_files_left']} temporary files left -> {args.out}")


if __name__ == "__main__":
    main()
