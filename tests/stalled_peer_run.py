"""Pretraining whose process of rank 1 stalls before its third step, for the collective-timeout test.

Launched as a script: `accelerate launch --num_processes 2 tests/stalled_peer_run.py RECIPE [overrides]`,
with the stall's length in seconds in STALL_SECONDS.
"""

import os
import sys
import time

from ssl_toolkit.pretrain import main
from ssl_toolkit.training.objective import ContrastiveObjective

real_forward = ContrastiveObjective.forward
calls = []


def forward_that_stalls_on_rank_one(self, views, class_labels=None, mode="loss"):
    if mode == "loss" and os.environ.get("RANK") == "1":
        calls.append(1)
        if len(calls) == 3:
            time.sleep(float(os.environ["STALL_SECONDS"]))
    return real_forward(self, views, class_labels, mode)


ContrastiveObjective.forward = forward_that_stalls_on_rank_one
sys.exit(main())
