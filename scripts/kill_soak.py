"""Kill soak: SIGKILL a training run N times at random points, resume each time, compare with an uninterrupted run.

    PYTHONPATH=. python scripts/kill_soak.py                 # 100 kills
    PYTHONPATH=. python scripts/kill_soak.py -n 30 --workers 2 --in-write 0.3 --seed 7

Each *episode* trains the soak experiment (dropout, shift+noise augmentation, gradient accumulation,
cosine schedule, validation every 5 steps, early stopping) into a fresh run directory, kills it
`--kills-per-run` times (at random metrics lines, or - with probability --in-write - inside a
checkpoint write slowed down by TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE), resumes with
`taktstock train --resume` until it finishes, and compares model.safetensors and metrics.jsonl
byte for byte with the reference (trained in a fresh interpreter). Each resume must announce the newest
valid checkpoint at its kill, and no kill lands before it has (an AssertionError stops the soak otherwise).
Episodes repeat until N kills have happened. Exit code 0 only if every episode matched. Not part of the default test suite (it runs for minutes).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import write_config  # noqa: E402
from resume_harness import ForkServer, count_lines, kill_and_resume, reference_server  # noqa: E402
from test_resume_kill import kill_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--kills", type=int, default=100, help="total SIGKILLs (default 100)")
    ap.add_argument("--kills-per-run", type=int, default=10, help="kills per training run before it may finish")
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--in-write", type=float, default=0.3, help="fraction of kills aimed inside checkpoint writes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="taktstock-soak-"))
    server = ForkServer()
    env = {"TAKTSTOCK_TEST_SLOW_CHECKPOINT_WRITE": "0.03"} if args.in_write > 0 else {}
    kills = in_write = episodes = matched = 0
    t0 = time.monotonic()
    try:
        cfg = write_config(work / "config.yaml", kill_config(workers=args.workers, epochs=args.epochs))
        ref = work / "reference"
        # The reference in a fresh interpreter, the killed runs forked (see tests/resume_harness.py).
        if reference_server().run(["train", str(cfg), "--run-dir", str(ref)], work, work / "reference.log") != 0:
            print((work / "reference.log").read_text(), file=sys.stderr)
            return 2
        want_model, want_metrics = (ref / "model.safetensors").read_bytes(), (ref / "metrics.jsonl").read_bytes()
        total = count_lines(ref / "metrics.jsonl")
        while kills < args.kills:
            episodes += 1
            run = work / f"run-{episodes:03d}"
            n = min(args.kills_per_run, args.kills - kills)
            stats = kill_and_resume(server, work, cfg, run, n, rng, total, env=env, in_write_fraction=args.in_write, write_window=0.05)
            ok = (run / "model.safetensors").read_bytes() == want_model and (run / "metrics.jsonl").read_bytes() == want_metrics
            kills, in_write, matched = kills + stats.kills, in_write + stats.in_write, matched + ok
            print(
                f"episode {episodes}: {stats.kills} kills ({stats.in_write} inside checkpoint writes), "
                f"{stats.resumes} resumes ({sum(s is not None for s in stats.resumed_from)} from a checkpoint, each the newest "
                f"valid one at its kill): {'bit-identical' if ok else 'MISMATCH'}",
                flush=True,
            )
            if not ok:
                print(f"  kill points: {', '.join(stats.points)}; run kept in {run}", flush=True)
                args.keep = True
            else:
                shutil.rmtree(run)
            if stats.kills == 0:
                print("no kill landed (run too short for the kill schedule?)", file=sys.stderr)
                return 2
    finally:
        server.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"{kills} SIGKILLs ({in_write} inside checkpoint writes) in {episodes} runs: "
        f"{matched}/{episodes} resumed runs bit-identical to the uninterrupted run ({time.monotonic() - t0:.0f}s)"
    )
    return 0 if matched == episodes else 1


if __name__ == "__main__":
    sys.exit(main())
