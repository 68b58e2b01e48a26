"""Tiny seeded models of every architecture family SMT must handle, built from configs (no hub access needed)."""
from contextlib import contextmanager

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

VOCAB = 96

def _llama_like(cls, cfg_cls, **extra):
    def build(seed=0):
        torch.manual_seed(seed)
        cfg = cfg_cls(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, **extra)
        return cls(cfg)
    return build

def _gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

# hidden 48 with block 32 gives ragged edge blocks everywhere
ARCHS = {
    "llama": _llama_like(LlamaForCausalLM, LlamaConfig),
    "qwen2": _llama_like(Qwen2ForCausalLM, Qwen2Config),       # q/k/v carry biases
    "mistral": _llama_like(MistralForCausalLM, MistralConfig),
    "gpt2": _gpt2,                                              # Conv1D, weight stored (in, out)
}
ALL_LINEAR = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "gpt2": ["c_attn", "c_proj", "c_fc"]}

@pytest.fixture(params=list(ARCHS))
def arch(request): return request.param

def batches(n, seed=0, bs=2, seq=10):
    "Deterministic causal-LM batches."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (bs, seq), generator=g)
        out.append(dict(input_ids=ids, labels=ids.clone()))
    return out


@contextmanager
def torch_threads(n: int):
    "Run the block with `n` torch threads, then restore the count."
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try: yield
    finally: torch.set_num_threads(before)


def run_in_triton_interpreter(code: str) -> str:
    "Run `code` in a fresh Python under Triton's CPU interpreter (TRITON_INTERPRET=1, read at import) and return its last output line."
    pytest.importorskip("triton")
    import os, subprocess, sys
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]
