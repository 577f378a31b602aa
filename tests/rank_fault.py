"""`cnnrnn train` as one rank of a torchrun job, with a fault at one training step of one rank
(for tests/test_torchrun.py). CNNRNN_TEST_FAULT = "KIND:RANK:STEP", STEP counted from 1 in
this process:
- "nan:1:12": rank 1's loss becomes NaN at its 12th step (the other ranks' stay finite);
- "signal:1:12": rank 1 gets a SIGINT (Ctrl-C) during its 12th step, the other ranks none.

usage: python -m torch.distributed.run ... tests/rank_fault.py train ARGS...
"""

from __future__ import annotations

import math
import os
import signal
import sys
from typing import Any

import cnnrnn.train
from cnnrnn.cli import main

kind, rank, step = os.environ["CNNRNN_TEST_FAULT"].split(":")
if kind not in ("nan", "signal"):
    sys.exit(f"CNNRNN_TEST_FAULT: unknown fault {kind!r}; use nan or signal")

if int(os.environ.get("RANK", "0")) == int(rank):
    real = cnnrnn.train.training_step
    calls = {"n": 0}

    def faulty(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        loss, correct = real(*args, **kwargs)
        if calls["n"] == int(step):
            if kind == "nan":
                loss = loss * math.nan
            else:
                os.kill(os.getpid(), signal.SIGINT)
        return loss, correct

    cnnrnn.train.training_step = faulty

sys.argv[0] = "cnnrnn"
main()
