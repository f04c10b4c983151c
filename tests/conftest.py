import os

import torch

# The models under test are tiny: on 2 cores, two intra-op threads mostly wait on each other (measured 5-10x
# slower than one thread when the machine is busy). Child processes inherit the same setting.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
