"""Full-scale rehearsal of the real RSNA conditions: every stage, its seconds and peak memory.

    python benchmarks/full_scale.py [--n 26684] [--work DIR] [--keep] [--distinct 2500]
                                    [--image-size 224] [--steps 5] [--predict-n 3000]
                                    [--compare OTHER/results.json] [--results DIR]

Data: `--n` RSNA-format DICOMs (JPEG Baseline, `--dicom-size` px square, as `pneumolib.data.synth`
writes them) with the real label counts scaled to n (at 26,684: 6,012 positive patients with
1/2/3/4 boxes as in RSNA = 30,227 label rows, 11,821 "No Lung Opacity / Not Normal", 8,851
"Normal", 12,173 AP views). `--distinct` phantoms are drawn with `synth.phantom` and written
with `dicom_write.write_dicom`; the other patients are hard links to a phantom of the same view and
class under their own id (every link is still read and decoded as its own file; the DICOM
header keeps the phantom's patient id, sex and age). 3- and 4-box patients get a phantom's
boxes split in halves.

Then each stage runs as its own subprocess (`python -m pneumolib ...`, same niceness):
preprocess (cache 256 px, all cores) -> train (the rsna Config defaults except weights none /
scratch, device cpu, 1 epoch of `--steps` steps, then validation on the whole val split) ->
loader epoch (one whole train epoch of the trainer's input pipeline without the model: every
train row read from the memory map once, as a real epoch does and the few steps do not) ->
evaluate val -> evaluate test (whole splits) -> cam on test (maps for the whole split; every
true positive at the threshold `evaluate` chose on val for 90% sensitivity is scored, as a few
steps from scratch rarely reach 0.5; `--n` only limits overlays) -> predict on `--predict-n`
DICOMs -> a 2-point tune (batch sizes 32 and 64, 1 epoch of `--steps` steps).

Memory: a thread polls /proc every 0.2 s for the stage's whole process tree (loader and pool
workers included) and records the peak of the summed RSS (an upper bound: pages a forked
worker shares with its parent count in both) and of the summed PSS (each shared page split
between its processes: the physical memory the stage really takes), plus
the largest single process's VmHWM (kernel-tracked, exact). Peaks shorter than 0.2 s can be
missed. CPU seconds (user + system of every finished descendant, `RUSAGE_CHILDREN`) say what a
stage costs whatever else loads the machine; the wall clock does not.

Prints a markdown table and writes WORK/results.json (also each process's memory at the peak)
and WORK/results.md; when every stage ran, also RESULTS/full_scale.json (`course.results`,
default: the repository's results/: the stages' table, the run's setting, the load average at
the start). Exit 1 if a stage fails, a check on its output fails, or a stage's peak
PSS exceeds `--max-gb` (default 6). Without `--keep` the DICOMs and the cache are deleted at
the end (a temporary WORK entirely).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pneumolib.course.results import make_table, script_command, write_results  # noqa: E402
from pneumolib.data.dicom_write import write_dicom  # noqa: E402
from pneumolib.data.kaggle import verify_layout  # noqa: E402
from pneumolib.data.preprocess import CLASSES_CSV, IMAGES_DIR, LABELS_CSV  # noqa: E402
from pneumolib.data.synth import P_NOT_NORMAL, phantom  # noqa: E402

# The real stage_2 training set (Kaggle RSNA Pneumonia Detection Challenge).
RSNA_N, RSNA_AP = 26_684, 12_173
RSNA_BOXES = {1: 2_614, 2: 3_266, 3: 119, 4: 13}  # positive patients by box count: 6,012
RSNA_NOT_NORMAL = 11_821  # of the 20,672 negatives; the other 8,851 are "Normal"
P_POS_AP = 0.38  # share of AP views that are positive (synth.P_POS); PA takes the rest
LO, NN, NORMAL = "Lung Opacity", "No Lung Opacity / Not Normal", "Normal"
GB = 2**30
NOTE = (
    "seconds: wall clock; CPU s: user + system of the stage's processes (all of them, "
    "workers included), the figure other load does not change; load: 1-min load average "
    "at the stage's end. Memory, sampled every 0.2 s over the stage's process tree: peak RSS "
    "sums each process's resident set, so pages that forked workers share with their parent "
    "(libraries, the parent's heap, the memory-mapped cache) count once per process, an upper "
    "bound; peak PSS splits every shared page between its processes, the memory the machine "
    "really holds for the stage (the figure checked against --max-gb); largest process: the "
    "biggest single VmHWM (kernel high-water mark)."
)


# --- data ----------------------------------------------------------------------------------


def rsna_patients(n: int, seed: int) -> pd.DataFrame:
    """n patients with RSNA's counts scaled to n (exact at 26,684), in random order:
    patientId, view, class, n_boxes (0 for negatives)."""
    f = n / RSNA_N
    boxes = {k: round(v * f) for k, v in RSNA_BOXES.items()}
    n_pos = sum(boxes.values())
    n_ap = round(RSNA_AP * f)
    n_ap_pos = min(n_ap, n_pos, round(n_ap * P_POS_AP))
    n_nn = round(RSNA_NOT_NORMAL * f) if n == RSNA_N else round((n - n_pos) * P_NOT_NORMAL)
    n_nn = min(n_nn, n - n_pos)
    rng = np.random.default_rng(seed)
    view = np.array(["AP"] * n_ap_pos + ["PA"] * (n_pos - n_ap_pos), dtype=object)
    neg_view = np.array(["AP"] * (n_ap - n_ap_pos) + ["PA"] * (n - n_ap - n_pos + n_ap_pos))
    view = np.concatenate([view, rng.permutation(neg_view)])
    cls = [LO] * n_pos + [NN] * n_nn + [NORMAL] * (n - n_pos - n_nn)
    nbox = np.concatenate([np.repeat(list(boxes), list(boxes.values())), np.zeros(n - n_pos)])
    nbox = rng.permutation(nbox[:n_pos]).tolist() + nbox[n_pos:].tolist()
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    df = pd.DataFrame({"patientId": ids, "view": view, "class": cls, "n_boxes": nbox})
    df["n_boxes"] = df["n_boxes"].astype(int)
    return df.iloc[rng.permutation(n)].reset_index(drop=True)


def _make_phantom(job: tuple) -> list[list[float]]:
    """Worker: draw one phantom, write it as a DICOM -> its boxes."""
    path, seed, j, size, view, cls, pid = job
    rng = np.random.default_rng([seed, j])
    while True:
        img, boxes = phantom(rng, size, view=view, positive=cls == LO, not_normal=cls != NORMAL)
        if cls != LO or boxes:
            break
    sex = "M" if rng.random() < 0.57 else "F"
    age = int(np.clip(rng.normal(47, 16), 1, 92))
    write_dicom(path, img, patient_id=pid, sex=sex, age=age, view=view)
    return boxes


def _split_boxes(boxes: list[list[float]], k: int) -> list[list[float]]:
    """`k` boxes from a phantom's: fewer by dropping, more by halving the largest."""
    boxes = [list(b) for b in boxes[:k]]
    while len(boxes) < k:
        i = max(range(len(boxes)), key=lambda i: boxes[i][2] * boxes[i][3])
        x, y, w, h = boxes.pop(i)
        boxes += [[x, y, w, round(h / 2, 1)], [x, y + round(h / 2, 1), w, round(h - h / 2, 1)]]
    return boxes


def make_rsna_like(
    out: Path, *, n: int, distinct: int, size: int, seed: int = 0, workers: int = 1
) -> Path:
    """An RSNA-shaped folder of n DICOMs in `out` (made once: reused when its parameters
    match). `distinct` phantoms, the rest hard links (see the module docstring)."""
    params = {"n": n, "distinct": distinct, "size": size, "seed": seed, "format": 1}
    marker = out / "full_scale_params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"data: reusing {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / IMAGES_DIR).mkdir(parents=True)
    pts = rsna_patients(n, seed)
    # A phantom pool per (view, class); positives split by how many boxes the phantom drew.
    strata = pts.groupby(["view", "class"], sort=True).size()
    share = np.maximum(1, np.round(strata / n * min(distinct, n)).astype(int))
    jobs, pool_of = [], []
    for (view, cls), k in share.items():
        first = pts.index[(pts.view == view) & (pts["class"] == cls)][:k]
        for i in first:  # the pool's phantoms are written under their first patients' ids
            pid = pts.patientId[i]
            jobs.append(
                (str(tmp / IMAGES_DIR / f"{pid}.dcm"), seed, len(jobs), size, view, cls, pid)
            )
            pool_of.append((view, cls))
    t0 = time.perf_counter()
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(max(1, workers)) as pool:
        drawn = pool.map(_make_phantom, jobs, chunksize=16)
    print(f"data: {len(jobs)} distinct phantoms in {time.perf_counter() - t0:.0f} s")
    pools: dict[tuple, list[int]] = {}
    for j, (key, boxes) in enumerate(zip(pool_of, drawn, strict=True)):
        pools.setdefault((*key, min(len(boxes), 2)), []).append(j)
        pools.setdefault((*key, "any"), []).append(j)
    by_pid = {job[6]: j for j, job in enumerate(jobs)}
    label_rows, class_rows, used = [], [], dict.fromkeys(pools, 0)
    for p in pts.rename(columns={"class": "cls"}).itertuples(index=False):
        k = int(p.n_boxes)
        j = by_pid.get(p.patientId)
        if j is None:  # link to the next phantom of the stratum (with the right box count)
            key = (p.view, p.cls, min(k, 2) if k else 0)
            key = key if key in pools else (*key[:2], "any")
            j = pools[key][used[key] % len(pools[key])]
            used[key] += 1
            os.link(jobs[j][0], tmp / IMAGES_DIR / f"{p.patientId}.dcm")
        boxes = _split_boxes(drawn[j], k) if k else [[None] * 4]
        for b in boxes:
            label_rows.append([p.patientId, *b, int(k > 0)])
            class_rows.append([p.patientId, p.cls])
    cols = ["patientId", "x", "y", "width", "height", "Target"]
    pd.DataFrame(label_rows, columns=cols).to_csv(tmp / LABELS_CSV, index=False)
    pd.DataFrame(class_rows, columns=["patientId", "class"]).to_csv(tmp / CLASSES_CSV, index=False)
    (tmp / "full_scale_params.json").write_text(json.dumps(params))
    tmp.rename(out)
    print(
        f"data: {out}: {n} DICOMs ({len(jobs)} distinct), {len(label_rows)} label rows, "
        f"{int((pts.n_boxes > 0).sum())} positive patients"
    )
    return out


def loader_epoch(cache: Path, image_size: int) -> int:
    """One whole epoch of the trainer's CPU input pipeline over the train split, no model:
    augmented uint8 batches from the memory map in the loader workers, lookup tables applied
    here (what `fit` feeds the network) -> images seen. The 5-step train stage reads a few
    hundred rows; this reads every train row once, as a real epoch does."""
    import torch

    from pneumolib.base.config import Config
    from pneumolib.core.augment import AugmentPolicy
    from pneumolib.core.loader import make_loader
    from pneumolib.core.runtime import to_device_batch
    from pneumolib.data.labels import read_index, read_stats

    cfg = Config(image_size=image_size)
    index, stats = read_index(cache), read_stats(cache)
    train = index[index.split == "train"].reset_index(drop=True)
    policy = AugmentPolicy.from_config(cfg)
    loader = make_loader(
        cache,
        train,
        batch_size=cfg.batch_size,
        out_size=image_size,
        policy=policy,
        train=True,
        seed=cfg.seed,
        workers=cfg.workers,
        normalise=(stats.mean, stats.std),
    )
    seen, t0 = 0, time.perf_counter()
    for batch in loader:
        x = to_device_batch(
            batch,
            torch.device("cpu"),
            size=image_size,
            policy=policy,
            stats=stats,
            train=True,
            seed=0,
            channels_last=False,
        )
        seen += len(x)
    print(f"loader epoch: {seen} images in {time.perf_counter() - t0:.1f} s")
    return seen


# --- measuring a stage -----------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _memory(pid: int) -> dict[str, int] | None:
    """Bytes: rss, anon, hwm (from /proc/PID/status), pss (from smaps_rollup)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                name = {"VmRSS": "rss", "RssAnon": "anon", "VmHWM": "hwm"}.get(key)
                if name:
                    out[name] = int(value.split()[0]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1]) * 1024
    except OSError:
        return None
    return out if "rss" in out else None


class TreeMonitor:
    """Peak summed RSS / PSS / anonymous RSS of a process tree, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak = {"rss": 0, "pss": 0, "anon": 0, "hwm": 0, "processes": 0}
        self.at_peak: list[dict] = []  # each process's memory when the summed RSS peaked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            mems = [m | {"pid": pid} for pid in _tree(self.pid) if (m := _memory(pid))]
            if sum(m["rss"] for m in mems) > self.peak["rss"]:
                self.at_peak = [
                    {k: round(v / GB, 3) if k != "pid" else v for k, v in m.items()} for m in mems
                ]
            for key in ("rss", "pss", "anon"):
                self.peak[key] = max(self.peak[key], sum(m.get(key, 0) for m in mems))
            self.peak["hwm"] = max([self.peak["hwm"]] + [m.get("hwm", 0) for m in mems])
            self.peak["processes"] = max(self.peak["processes"], len(mems))
            self._stop.wait(self.interval)


def _cpu_seconds() -> float:
    """User + system CPU time of all finished children and the children they waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    """Run `cmd`, output to `log` -> {seconds, rc, peak_*_gb, processes}."""
    print(f"\n== {name}: {' '.join(cmd[:4])} ...", flush=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        with TreeMonitor(proc.pid) as mon:
            rc = proc.wait()
    seconds = time.perf_counter() - t0
    row = {"stage": name, "seconds": round(seconds, 1), "rc": rc}
    row |= {"cpu_seconds": round(_cpu_seconds() - cpu0, 1), "load": os.getloadavg()[0]}
    row |= {f"peak_{k}_gb": round(mon.peak[k] / GB, 3) for k in ("rss", "pss", "anon", "hwm")}
    row["processes"], row["at_peak_gb"] = mon.peak["processes"], mon.at_peak
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"   {seconds:.1f} s, peak RSS {row['peak_rss_gb']:.2f} GB, rc {rc}")
    print("   " + "\n   ".join(line[-160:] for line in tail), flush=True)
    return row


# --- checks on each stage's output -----------------------------------------------------------


def _rows(path: Path) -> int:
    return len(pd.read_csv(path)) if path.is_file() else -1


def check_outputs(work: Path, n_predict: int) -> dict[str, str]:
    """What each stage wrote against what it should have -> {stage: problem} (empty = fine)."""
    problems = {}
    index = pd.read_csv(work / "cache" / "index.csv")
    n_raw = len(list((work / "raw" / IMAGES_DIR).glob("*.dcm")))
    if len(index) != n_raw:
        problems["preprocess"] = f"index.csv has {len(index)} rows for {n_raw} DICOMs"
    run = work / "run"
    for split in ("val", "test"):
        want, got = int((index.split == split).sum()), _rows(run / f"predictions_{split}.csv")
        if got != want:
            problems[f"evaluate {split}"] = f"{got} predictions for {want} {split} patients"
    pred = pd.read_csv(run / "predictions_test.csv")
    cam = json.loads((run / "cam_test.json").read_text())
    tp = int(((pred.prob_raw >= cam["threshold"]) & (pred.target == 1)).sum())  # cam's scale
    scored = _rows(run / "cam_test.csv")
    # cam's own forward pass may put an image a rounding error either side of the threshold
    slack = 2 + tp // 200
    if scored != cam["n_true_positives"] or abs(tp - scored) > slack:
        problems["cam test"] = f"{scored} scored true positives, {tp} in predictions_test.csv"
    if _rows(work / "predict.csv") != n_predict:
        problems["predict"] = f"{_rows(work / 'predict.csv')} rows for {n_predict} files"
    if _rows(work / "sweep" / "grid" / "results.csv") != 2:
        problems["tune"] = "results.csv does not hold 2 finished points"
    return problems


# --- the table ---------------------------------------------------------------------------------


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| stage | files | seconds | CPU s | load | peak RSS GB | peak PSS GB "
        "| largest process GB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['files']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['load']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} | "
            f"{r['peak_hwm_gb']:.2f} |"
        )
    return "\n".join(lines)


def compare(rows: list[dict], n: int, other: dict) -> str:
    """Per-file CPU time and peak PSS of this run against another results.json."""
    theirs = {r["stage"]: r for r in other["rows"]}
    m = other["n"]
    lines = [
        f"Scaling: n={n} (this run) against n={m} ({other['work']}): CPU ms per file, each "
        "stage over its own file count (CPU time, as the wall clock depends on other load).",
        "",
        f"| stage | files {m} | files {n} | CPU ms/file {m} | CPU ms/file {n} | ratio | "
        f"peak PSS GB {m} | peak PSS GB {n} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        o = theirs.get(r["stage"])
        if not o:
            continue
        a, b = 1e3 * o["cpu_seconds"] / o["n_files"], 1e3 * r["cpu_seconds"] / r["n_files"]
        lines.append(
            f"| {r['stage']} | {o['n_files']:,} | {r['n_files']:,} | {a:.1f} | {b:.1f} | "
            f"{b / a:.2f} | {o['peak_pss_gb']:.2f} | {r['peak_pss_gb']:.2f} |"
        )
    return "\n".join(lines)


def per_file_rows(rows: list[dict], other: dict | None) -> list[dict]:
    """CPU ms per file of each stage (CPU time: the wall clock depends on other load), beside
    the same stage of `other` (another run's WORK/results.json) when given."""
    n = next((r["n_files"] for r in rows if r["stage"] == "data"), None)
    theirs = {r["stage"]: r for r in (other or {}).get("rows", [])}
    out = []
    for r in rows:
        row = {"stage": r["stage"]}
        o = theirs.get(r["stage"])
        if other is not None and o is None:
            continue
        if o is not None:
            row[f"CPU ms per file, {other['n']:,} files"] = 1e3 * o["cpu_seconds"] / o["n_files"]
        row[f"CPU ms per file, {n:,} files"] = 1e3 * r["cpu_seconds"] / r["n_files"]
        out.append(row)
    return out


def results_tables(rows: list[dict], setting: dict, other: dict | None) -> dict[str, dict]:
    """The tables of results/full_scale.json: one row per stage, CPU ms per file (against
    `other`, a smaller run, when given), and the run's setting."""
    columns = {  # key of a stage's row -> (column, format)
        "stage": ("stage", "text"),
        "files": ("files", "text"),
        "seconds": ("seconds", "num:1"),
        "cpu_seconds": ("CPU s", "num:1"),
        "load": ("load", "num:1"),
        "peak_rss_gb": ("peak RSS GB", "num:2"),
        "peak_pss_gb": ("peak PSS GB", "num:2"),
        "peak_hwm_gb": ("largest process GB", "num:2"),
    }
    stages = [{label: r[k] for k, (label, _) in columns.items()} for r in rows]
    per_file = per_file_rows(rows, other)
    return {
        "stages": make_table(stages, formats=dict(columns.values()), notes=NOTE),
        "per_file": make_table(per_file, formats={c: "num:1" for c in per_file[0] if c != "stage"}),
        "setting": make_table([{"setting": k, "value": v} for k, v in setting.items()]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=RSNA_N, help="DICOMs (default: RSNA's 26,684)")
    p.add_argument("--distinct", type=int, default=2500, help="distinct phantoms (default 2500)")
    p.add_argument("--dicom-size", type=int, default=1024, help="DICOM side, px (default 1024)")
    p.add_argument("--cache-size", type=int, default=256, help="cache side, px (default 256)")
    p.add_argument("--image-size", type=int, default=224, help="network input, px (default 224)")
    p.add_argument("--steps", type=int, default=5, help="train/tune steps per epoch (default 5)")
    p.add_argument("--predict-n", type=int, default=3000, help="files to predict (default 3000)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="cores")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep WORK; reuse its DICOMs next time")
    p.add_argument("--max-gb", type=float, default=6.0, help="fail above this peak PSS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=Path, help="a results.json of another run to compare with")
    p.add_argument("--only-data", action="store_true", help="make the DICOMs in WORK and stop")
    p.add_argument(
        "--loader-epoch", action="store_true", help="one train epoch of WORK/cache's loader, stop"
    )
    p.add_argument("--results", type=Path, default=None, help="default: the repo's results/")
    args = p.parse_args(argv)
    if args.n < 60 or args.distinct < 6 or args.predict_n < 1 or args.steps < 1:
        p.error("--n must be >= 60, --distinct >= 6, --predict-n and --steps >= 1")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pneumolib_full_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.loader_epoch:
        loader_epoch(work / "cache", args.image_size)
        return 0
    if args.only_data:
        raw = make_rsna_like(
            work / "raw",
            n=args.n,
            distinct=args.distinct,
            size=args.dicom_size,
            seed=args.seed,
            workers=args.workers,
        )
        # notebook 00's layout check; at full scale it also wants RSNA's exact counts
        print("layout:", verify_layout(raw, expect_full=args.n == RSNA_N))
        return 0
    stale = ["cache", "cache.partial", "run", "predict_in", "predict.csv", "sweep"]
    for old in stale + ([] if args.keep else ["raw"]):
        path = work / old
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    py, here = sys.executable, str(Path(__file__).resolve())
    pl = [py, "-m", "pneumolib"]
    common = ["--device", "cpu", "--weights", "none", "--mode", "scratch"]
    common += ["--image-size", str(args.image_size), "--max-steps-per-epoch", str(args.steps)]
    cache, run = str(work / "cache"), str(work / "run")
    rows: list[dict] = []
    load0 = os.getloadavg()
    t_all = time.perf_counter()

    def stage(name: str, cmd: list[str], files: str, n_files: int) -> bool:
        row = run_stage(name, cmd, logs / f"{name.replace(' ', '_')}.log")
        rows.append({**row, "files": files, "n_files": n_files})
        return row["rc"] == 0

    ok = stage(
        "data",
        [py, here, "--only-data", "--work", str(work), "--n", str(args.n)]
        + ["--distinct", str(args.distinct), "--dicom-size", str(args.dicom_size)]
        + ["--seed", str(args.seed), "--workers", str(args.workers)],
        f"{args.n:,} ({min(args.distinct, args.n):,} distinct + links)",
        args.n,
    )
    raw = work / "raw"
    if ok and "reusing" in (logs / "data.log").read_text():
        rows[-1]["files"] += ", reused"
    ok = ok and stage(
        "preprocess",
        pl
        + ["preprocess", "--raw", str(raw), "--out", cache, "--size", str(args.cache_size)]
        + ["--workers", str(args.workers)],
        f"{args.n:,} x {args.dicom_size}² -> {args.cache_size}²",
        args.n,
    )
    if ok:
        index = pd.read_csv(Path(cache) / "index.csv")
        n_val, n_test = int((index.split == "val").sum()), int((index.split == "test").sum())
        bs = 64  # Config.batch_size
        n_train = min(args.steps * bs, int((index.split == "train").sum()))
        ok = stage(
            "train",
            pl + ["train", "--cache", cache, "--out", run, "--epochs", "1"] + common,
            f"{n_train:,} train + {n_val:,} val",
            n_train + n_val,
        )
    if ok:
        n_epoch = int((index.split == "train").sum())
        ok = stage(
            "loader epoch",
            [py, here, "--loader-epoch", "--work", str(work)]
            + ["--image-size", str(args.image_size)],
            f"{n_epoch:,} train (input pipeline only, no model)",
            n_epoch,
        )
    for split in ("val", "test"):
        if ok:
            k = n_val if split == "val" else n_test
            ok = stage(
                f"evaluate {split}",
                pl + ["evaluate", "--run", run, "--split", split],
                f"{k:,} {split}" + (" (val predictions reused)" if split == "test" else ""),
                k,
            )
    if ok:
        # A few steps from scratch rarely call anything positive at 0.5; the threshold chosen
        # on val for 90% sensitivity makes most positives true positives, all of them scored.
        metrics = json.loads((work / "run" / "metrics_val.json").read_text())
        thr = float(metrics["thresholds"]["sens@0.90"]["threshold"])
        # That threshold is on the calibrated probability; cam scores the network's raw one:
        # the lowest raw probability of the val patients it calls positive calls the same ones.
        val = pd.read_csv(work / "run" / "predictions_val.csv")
        thr = float(val.prob_raw[val.prob >= thr].min())
        ok = stage(
            "cam test",
            pl
            + ["cam", "--run", run, "--split", "test", "--n", "16"]
            + ["--threshold", f"{thr:.17g}"],
            f"{n_test:,} test (all true positives scored, 16 overlays)",
            n_test,
        )
        if ok:
            tp = json.loads((work / "run" / "cam_test.json").read_text())["n_true_positives"]
            rows[-1]["files"] = (
                f"{n_test:,} test, {tp:,} true positives (raw p >= {thr:.3f}, val sens 0.9) scored"
            )
    if ok:
        k = min(args.predict_n, args.n)
        src = sorted((raw / IMAGES_DIR).glob("*.dcm"))[:k]
        (work / "predict_in").mkdir()
        for f in src:
            os.link(f, work / "predict_in" / f.name)
        ok = stage(
            "predict",
            pl
            + ["predict", "--checkpoint", f"{run}/best.pt", str(work / "predict_in")]
            + ["--out", str(work / "predict.csv"), "--device", "cpu"],
            f"{k:,} DICOMs",
            k,
        )
    if ok:
        n_tune = min(args.steps * 32, n_train) + n_train + 2 * n_val  # bs 32 and 64
        ok = stage(
            "tune",
            pl
            + ["tune", "--cache", cache, "--out", str(work / "sweep")]
            + ["--batch-sizes", "32,64", "--lrs", "1e-4", "--epochs", "1"]
            + common,
            f"2 points x ({args.steps} steps + {n_val:,} val)",
            n_tune,
        )
    total = time.perf_counter() - t_all
    problems = check_outputs(work, min(args.predict_n, args.n)) if ok else {}
    over = [r["stage"] for r in rows if r["peak_pss_gb"] > args.max_gb]
    header = (
        f"Full-scale rehearsal: {args.n:,} DICOMs {args.dicom_size}² -> cache "
        f"{args.cache_size}², model stages at {args.image_size} px, ResNet18 scratch on CPU, "
        f"{args.workers} cores; {total / 60:.1f} min in all; load average before "
        f"{load0[0]:.2f}"
    )
    text = table(rows, header) + "\n\n" + NOTE
    results = {"n": args.n, "work": str(work), "args": vars(args) | {"compare": None}}
    results |= {"rows": rows, "total_seconds": round(total, 1), "problems": problems}
    other = json.loads(args.compare.read_text()) if args.compare else None
    if other:
        text += "\n\n" + compare(rows, args.n, other)
    print("\n" + text)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text(text + "\n")
    for name, why in problems.items():
        print(f"check failed: {name}: {why}")
    for name in over:
        print(f"over budget: {name} peaked above {args.max_gb} GB PSS")
    failed = [r["stage"] for r in rows if r["rc"] != 0]
    if failed:
        print(f"failed: {failed[0]} (log: {logs})")
    else:  # a rehearsal that stopped half way has no figures to quote
        setting = {"DICOMs": args.n, "distinct phantoms": args.distinct}
        setting |= {"DICOM px": args.dicom_size, "cache px": args.cache_size}
        setting |= {"model px": args.image_size, "steps per epoch": args.steps}
        setting |= {"predicted files": args.predict_n, "workers": args.workers}
        setting |= {"minutes in all": round(total / 60, 1), "checks failed": len(problems)}
        write_results(
            "full_scale",
            results_tables(rows, setting, other),
            command=script_command(__file__, argv),
            folder=args.results,
            load_avg=[round(x, 2) for x in load0],
        )
    if not args.keep:  # the DICOMs and the cache are gigabytes at full scale
        for big in ("raw", "cache", "predict_in"):
            shutil.rmtree(work / big, ignore_errors=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep or args.work:
        print(f"work folder: {work}" + ("" if args.keep else " (DICOMs and cache removed)"))
    return 1 if failed or problems or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
