"""The models and data that tests/test_faults.py and its child process (fault_worker.py) both build, identically."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smt_nb.core import SMTConfig, prepare_smt, smt_layers

VOCAB = 64
SMT = SMTConfig(block_size=16, n_blocks=6, method="random", target_modules="all-linear")


def dropout_llama(seed=0):
    "A tiny Llama with attention dropout: a resumed run matches only if the RNG states come back too."
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, attention_dropout=0.2))


def adapter_model(which: str):
    "Adapter A or B on the same base: same number of blocks, different blocks (other random selection), different deltas."
    model = prepare_smt(dropout_llama(), SMTConfig(block_size=16, n_blocks=6, method="random", seed={"A": 1, "B": 2}[which],
                                                   target_modules="all-linear"))
    with torch.no_grad():
        for i, layer in enumerate(smt_layers(model).values()): layer.smt_delta.fill_({"A": 1.0, "B": -1.0}[which] * (i + 1))
    return model


def train_batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 2, 12), generator=g)
    return [dict(input_ids=x, labels=x.clone()) for x in ids]
