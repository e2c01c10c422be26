import os

import torch

# 2-core CI machines: one intra-op thread per test process keeps timings stable and avoids oversubscription.
torch.set_num_threads(int(os.environ.get("LLASA_TEST_THREADS", "2")))
