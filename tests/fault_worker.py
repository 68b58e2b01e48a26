"""Child process for tests/test_faults.py: writes adapters or checkpoints in a loop until it is killed.

python fault_worker.py adapter DIR     overwrite DIR with adapter A, then B, then A ... (different blocks, different deltas)
python fault_worker.py train DIR STEPS train with a checkpoint after every step into DIR
python fault_worker.py fsize DIR BYTES overwrite DIR with adapter B under a file-size limit of BYTES (a full disk)
Prints "ready" once the first write is done, so that the parent kills it while it is writing.
python fault_worker.py runs - STEPS    for each line "DIR" read: fork a run like `train DIR STEPS` that waits, once finished, to be killed;
                                       prints "pid N" and the run's "ready"/"finished", then "reaped" once it is dead (many killed runs
                                       for the price of one start of Python, torch and transformers)
"""
import os
import resource
import signal
import sys

import torch

from fault_models import adapter_model, dropout_llama, train_batches, SMT

from smt_nb.core import prepare_smt, save_smt
from smt_nb.train import train_smt

torch.set_num_threads(1)
mode, folder = sys.argv[1], sys.argv[2]
if mode == "adapter":
    a, b = adapter_model("A"), adapter_model("B")
    save_smt(a, folder)
    print("ready", flush=True)
    while True:
        save_smt(b, folder)
        save_smt(a, folder)
elif mode == "fsize":
    b = adapter_model("B")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
    print("ready", flush=True)
    save_smt(b, folder)
elif mode == "train":
    model = prepare_smt(dropout_llama(), SMT)
    print("ready", flush=True)
    train_smt(model, train_batches(), steps=int(sys.argv[3]), lr=1e-2, progress=False, checkpoint_dir=folder, save_every=1)
    print("finished", flush=True)
elif mode == "runs":
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:  # the run: nothing ran torch in this process before the fork
            try:
                model = prepare_smt(dropout_llama(), SMT)
                print("ready", flush=True)
                train_smt(model, train_batches(), steps=int(sys.argv[3]), lr=1e-2, progress=False, checkpoint_dir=line.strip(), save_every=1)
                print("finished", flush=True)
                while True: signal.pause()  # to be killed after the last step
            finally: os._exit(1)  # never back into the loop above
        print(f"pid {pid}", flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
