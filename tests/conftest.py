"""Shared test setup: offline hub, one CPU thread (tiny models run fastest on one)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by CLI subprocesses

import torch  # noqa: E402

torch.set_num_threads(1)
