"""Helpers of ``benchmarks/nmt_gpu.sh``: choose the step count from a calibration, and print the summary.

``plan``: the calibration ran every (variant, seed) worker concurrently for ``--calibration-steps`` steps (one
validation at the end, ``--calibration-test`` test pairs decoded). From its run files and the workers' launch/end
times it measures, per worker:

* start-up: launch to the end of the first training step (import, CUDA, data, tokenization, one step);
* the step rate while **every** worker was training (the window from the latest first step to the earliest
  last step: all workers share the GPU there, as in the full run), from the steps' ``wall_time`` stamps;
* one validation's seconds (``val_seconds``), and the tail: last step to process end, with the test decoding
  scaled from the test pairs the calibration decoded to ``--test-pairs``.

The full run of ``N`` steps is predicted to take ``max over workers of (start-up + N / rate + evaluations x
validation + tail)``; the largest multiple of 100 (capped) whose prediction times ``--safety`` plus
``--margin`` seconds fits the time left is printed (last line of stdout: ``STEPS=<N>``; ``STEPS=0``: none fits).

``summary``: one line per run file (variant, seed, test BLEU / chrF, steps, wall seconds, ms per step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _runs(folder: Path) -> list[dict]:
    runs = []
    for path in sorted((folder / "runs").glob("*.json")) if (folder / "runs").is_dir() else []:
        try:
            runs.append(json.loads(path.read_text()))
        except ValueError:
            print(f"  {path.name}: unreadable, skipped")
    return runs


def _times(folder: Path) -> dict[str, tuple[float, float, int]]:
    """``{name: (launch, end, exit status)}`` from the files ``<name>`` holding ``launch end status``."""
    out = {}
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        parts = path.read_text().split()
        if len(parts) == 3:
            out[path.name] = (float(parts[0]), float(parts[1]), int(parts[2]))
    return out


def plan(args: argparse.Namespace) -> int:
    runs, times = _runs(args.calibration), _times(args.times)
    steps = args.calibration_steps
    workers = []
    for r in runs:
        name = f"{r['variant']}-seed{r['seed']}"
        stamps = [h["wall_time"] for h in r["history"] if "wall_time" in h]
        if name not in times or len(stamps) < 2:
            continue
        launch, end, _ = times[name]
        val = [h["val_seconds"] for h in r["history"] if "val_seconds" in h]
        test = r["metrics"].get("test_seconds") or 0.0
        tail = end - stamps[-1] - sum(val) - test
        workers.append({"name": name, "stamps": stamps, "startup": stamps[0] - launch,
                        "validation": max(val) if val else 0.0,
                        "tail": tail + test * args.test_pairs / max(1, len(r["hypotheses"])),
                        "ms_per_step": r["metrics"]["ms_per_step"]})
    failed = sorted(n for n, (_, _, rc) in times.items() if rc != 0)
    if failed:
        print(f"calibration: workers failed or timed out: {', '.join(failed)} (their logs: logs/calibration-*.log)")
    if not workers:
        print("calibration: no finished calibration run; cannot plan")
        print("STEPS=0")
        return 0
    begin = max(w["stamps"][0] for w in workers)
    finish = min(w["stamps"][-1] for w in workers)
    window = finish - begin
    for w in workers:
        inside = sum(begin <= t <= finish for t in w["stamps"])
        if window > 0 and inside >= 3:
            w["rate"] = (inside - 1) / window
        else:  # no common window: the worker's own mean step time, slowed by the safety factor
            w["rate"] = 1000.0 / w["ms_per_step"] / args.safety
    aggregate = sum(w["rate"] for w in workers)
    print(f"calibration: {len(workers)} workers x {steps} steps; all training together for {window:.1f} s; "
          f"aggregate {aggregate:.1f} steps/s")
    print("  worker               start-up s  steps/s (all together)  validation s  tail s (full test)")
    for w in workers:
        print(f"  {w['name']:<20} {w['startup']:>10.1f}  {w['rate']:>22.2f}  {w['validation']:>12.1f}  "
              f"{w['tail']:>18.1f}")

    def predict(n: int) -> float:
        evaluations = math.ceil(n / max(1, n // args.evaluations))
        return max(w["startup"] + n / w["rate"] + evaluations * w["validation"] + w["tail"] for w in workers)

    left = args.deadline - args.now
    chosen = 0
    for n in range(100, args.max_steps + 1, 100):
        if predict(n) * args.safety + args.margin <= left:
            chosen = n
    shown = chosen or 100
    print(f"time left for the workers: {left:.0f} s; predicted wall of N steps = max over workers of start-up + "
          f"N / rate + {args.evaluations} validations + tail; need prediction x {args.safety} + {args.margin:.0f} s "
          f"<= {left:.0f} s")
    print(f"  N = {shown}: predicted {predict(shown):.0f} s (x {args.safety} + {args.margin:.0f} = "
          f"{predict(shown) * args.safety + args.margin:.0f} s)"
          + (f"; N = {shown + 100}: {predict(shown + 100) * args.safety + args.margin:.0f} s"
             if shown + 100 <= args.max_steps else f" (the cap is {args.max_steps})"))
    print(f"chosen: N = {chosen} steps for every variant" if chosen else "no multiple of 100 fits: N = 0")
    print(f"STEPS={chosen}")
    return 0


def summary(args: argparse.Namespace) -> int:
    runs = _runs(args.folder)
    if not runs:
        print(f"no finished runs in {args.folder / 'runs'}")
        return 0
    print("  variant          seed  test BLEU  chrF   steps  wall s  ms/step  val BLEU (last)")
    for r in runs:
        m = r["metrics"]
        steps = max((h["step"] for h in r["history"] if "loss" in h), default=0)
        print(f"  {r['variant']:<16} {r['seed']:>4}  {m['bleu']:>9.2f}  {m['chrf']:>5.2f}  {steps:>5}  "
              f"{r['seconds']:>6.0f}  {m['ms_per_step']:>7.0f}  {float('nan') if m.get('val_bleu') is None else m['val_bleu']:>8.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="choose the step count from a calibration")
    p.add_argument("--calibration", type=Path, required=True, help="the calibration's experiment folder")
    p.add_argument("--times", type=Path, required=True, help="folder of per-worker 'launch end status' files")
    p.add_argument("--calibration-steps", type=int, required=True)
    p.add_argument("--test-pairs", type=int, required=True, help="test pairs the full run decodes")
    p.add_argument("--evaluations", type=int, default=4, help="validations per full run (eval-every = N / this)")
    p.add_argument("--now", type=float, required=True, help="unix time now")
    p.add_argument("--deadline", type=float, required=True, help="unix time by which the workers must end")
    p.add_argument("--max-steps", type=int, default=2000, help="cap on N")
    p.add_argument("--safety", type=float, default=1.2, help="factor on the prediction")
    p.add_argument("--margin", type=float, default=10.0, help="seconds added to the prediction")
    s = sub.add_parser("summary", help="one line per finished run")
    s.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    return plan(args) if args.command == "plan" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
