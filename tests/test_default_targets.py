"""Default targets beyond Llama-style names: encoders, encoder-decoders (self-attention only), multi-head latent attention, Mamba.
Each tiny model prepares with its defaults, and one backward pass reaches every delta (no target left silently untrained)."""
import pytest
import torch
import transformers as tf

from smt_nb.core import SMTConfig, find_targets, prepare_smt, smt_layers

V = 64
ENC = dict(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
MODELS = {  # name -> (model class, config, default target types, inputs)
    "bert": (tf.BertForMaskedLM, tf.BertConfig(**ENC), {"query", "key", "value"}, "mlm"),
    "roberta": (tf.RobertaForMaskedLM, tf.RobertaConfig(**ENC, pad_token_id=1), {"query", "key", "value"}, "mlm"),
    "albert": (tf.AlbertForMaskedLM, tf.AlbertConfig(**ENC, embedding_size=16), {"query", "key", "value"}, "mlm"),
    "distilbert": (tf.DistilBertForMaskedLM, tf.DistilBertConfig(vocab_size=V, dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                                                                 max_position_embeddings=64), {"q_lin", "k_lin", "v_lin"}, "mlm"),
    "deberta-v2": (tf.DebertaV2ForMaskedLM, tf.DebertaV2Config(**ENC), {"query_proj", "key_proj", "value_proj"}, "mlm"),
    "t5": (tf.T5ForConditionalGeneration, tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                                      decoder_start_token_id=0), {"q", "k", "v"}, "seq2seq"),
    "bart": (tf.BartForConditionalGeneration, tf.BartConfig(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1,
                                                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                                            decoder_ffn_dim=64, max_position_embeddings=64), {"q_proj", "k_proj", "v_proj"},
             "seq2seq"),
    "deepseek-v2": (tf.DeepseekV2ForCausalLM, tf.DeepseekV2Config(vocab_size=V, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
                                                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                                                  q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                                                  v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1),
                    {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}, "clm"),
    "mamba": (tf.MambaForCausalLM, tf.MambaConfig(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=1, expand=2), {"in_proj"}, "clm"),
}


def inputs(kind):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (2, 12), generator=g)
    if kind == "seq2seq": return dict(input_ids=ids, labels=torch.randint(4, V, (2, 6), generator=g))
    return dict(input_ids=ids, labels=ids.clone())


@pytest.mark.parametrize("name", list(MODELS))
def test_default_targets_prepare_and_train(name):
    cls, config, types, kind = MODELS[name]
    torch.manual_seed(0)
    model = cls(config)
    found = find_targets(model)
    assert {n.split(".")[-1] for n in found} == types
    assert not any(("encoder_attn" in n or "EncDecAttention" in n) for n in found)  # cross-attention only on request
    prepare_smt(model, SMTConfig(block_size=8, sparsity=0.1, method="mw", budget="per_matrix"))
    model(**inputs(kind)).loss.backward()
    assert all(l.smt_delta.grad is not None and l.smt_delta.grad.abs().sum() > 0 for l in smt_layers(model).values())
