"""Run by tests/test_scaleout.py under `torchrun --nproc_per_node 2`: one share per process."""

import sys
from pathlib import Path

import torch

import reasoning_circuits as rc
from reasoning_circuits.scaleout import profile_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_scaleout import traces  # the test's traces, built the same way

torch.set_num_threads(1)
model = rc.testing.tiny_gpt2(seed=0)
items = traces(model.tokenizer, int(sys.argv[2]))
print(profile_shard(model, items, sys.argv[1], batch_size=2, statistics=("mass", "entropy")))
