"""A trial worker process: `python -m taktstock.tuning.worker SWEEP_DIR INDEX WORKERS BUDGET DEADLINE`.

Started by `taktstock tune --workers W`; it loads the sweep's base.yaml and the shared study and runs trials
until the study has BUDGET counted trials (or the DEADLINE, a Unix time, 0 = none, passes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    sweep_dir, index, workers, budget, deadline = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    import torch

    # W workers share the cores: without a limit each would start one thread per core and they would thrash.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    from taktstock.tuning import study as st
    from taktstock.tuning.optuna_backend import trial_line, worker_seed
    from taktstock.tuning.space import SearchSpace
    from taktstock.tuning.sweep import SweepSpec, load_base_config

    spec = SweepSpec.read(sweep_dir)
    assert spec is not None, f"{sweep_dir}/sweep.json missing"
    config = load_base_config(sweep_dir)
    space = SearchSpace(config)
    storage = st.make_storage(spec.storage, sweep_dir)
    probe = st.load_study(storage, spec.study, None, None)
    seed = worker_seed(config.seed, index, len(probe.get_trials(deepcopy=False)))
    study = st.load_study(storage, spec.study, st.make_sampler(config.tune, space, seed), st.make_pruner(config.tune))
    st.run_worker(
        study,
        space,
        budget,
        sweep_dir,
        deadline or None,
        spec.parent_run_id,
        spec.nproc_per_trial,
        on_trial=lambda n, p, o: print(trial_line(n, p, o, space), flush=True),
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
