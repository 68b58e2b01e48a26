"""SMT across the architectures of transformers, each built tiny from its own config class (nothing downloaded): decoders dense and
MoE, encoders, encoder-decoders, vision transformers, Conv1D and fused-QKV models. With the default targets, and again with every
linear layer plus the fused expert weights of MoE types: GW selection, one SGD step equal to the dense step masked to the chosen
blocks, save → load and merge exact, generate."""
import inspect

import pytest
import torch
import transformers as tf

from smt_nb.blocks import gather_blocks
from smt_nb.core import SMTConfig, load_smt, merge_and_unload, prepare_smt, smt_layers
from transformers.pytorch_utils import Conv1D

V = 128
SMALL = dict(  # every size attribute a config class may use, shrunk; attributes a class lacks are left alone
    vocab_size=V, hidden_size=64, d_model=64, n_embd=64, dim=64, embed_dim=64, word_embed_proj_dim=64,
    num_hidden_layers=2, n_layer=2, num_layers=2, n_layers=2, encoder_layers=1, decoder_layers=1, num_decoder_layers=1,
    num_attention_heads=4, n_head=4, n_heads=4, encoder_attention_heads=4, decoder_attention_heads=4, num_key_value_heads=2,
    multi_query_group_num=2, num_kv_heads=2, d_kv=16, kv_channels=16, rotary_dim=8, decoder_vocab_size=V,
    intermediate_size=96, ffn_dim=96, d_ff=96, n_inner=96, hidden_dim=96, encoder_ffn_dim=96, decoder_ffn_dim=96, ffn_hidden_size=96,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_local_experts=4, n_routed_experts=4,
    num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
    qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=128, n_positions=128, n_ctx=128, seq_length=128,
    embedding_size=64, state_size=8, time_step_rank=8, conv_kernel=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    decoder_start_token_id=0, use_cache=False, tie_word_embeddings=False)
OVERRIDES = {  # where a class's own defaults do not fit the sizes above
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "deepseek_v2": dict(num_key_value_heads=4), "deepseek_v3": dict(num_key_value_heads=4, n_group=2, topk_group=1),
    "helium": dict(head_dim=16),
    "vit": dict(image_size=32, patch_size=8, num_labels=3), "deit": dict(image_size=32, patch_size=8, num_labels=3, architectures=["DeiTForImageClassification"])}
DROPOUT = ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
           "attention_probs_dropout_prob", "activation_dropout", "classifier_dropout")

CAUSAL = ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
          "gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "stablelm", "starcoder2", "olmo", "olmo2", "olmoe",
          "cohere", "granite", "granitemoe", "codegen", "biogpt", "xglm", "persimmon", "deepseek_v2", "deepseek_v3", "glm", "glm4",
          "helium", "nemotron", "smollm3", "mamba", "falcon_mamba", "gpt_bigcode", "mpt"]
MASKED = ["bert", "roberta", "albert", "distilbert", "deberta-v2", "electra", "xlm-roberta"]
SEQ2SEQ = ["t5", "bart", "mbart", "pegasus", "marian"]
VISION = ["vit", "deit"]  # image classifiers: patch embeddings instead of tokens
AUTO = {**{t: tf.AutoModelForCausalLM for t in CAUSAL}, **{t: tf.AutoModelForMaskedLM for t in MASKED},
        **{t: tf.AutoModelForSeq2SeqLM for t in SEQ2SEQ}, **{t: tf.AutoModelForImageClassification for t in VISION}}


TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def build(model_type: str, seed: int = 0):
    "A tiny, dropout-free model of `model_type`, in eval mode (the dense reference must see the same function)."
    cls = tf.CONFIG_MAPPING[model_type]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in SMALL.items() if k in accepted or k in TOKEN_IDS}  # the constructor derives the rest (head sizes, layer types)
    kwargs.update({k: 0.0 for k in DROPOUT if k in accepted}, **OVERRIDES.get(model_type, {}))
    config = cls(**kwargs)
    torch.manual_seed(seed)
    return AUTO.get(model_type, tf.AutoModelForCausalLM).from_config(config).eval()


def batch(model_type: str):
    g = torch.Generator().manual_seed(1)
    if model_type in VISION: return dict(pixel_values=torch.randn(2, 3, 32, 32, generator=g), labels=torch.randint(0, 3, (2,), generator=g))
    ids = torch.randint(3, V, (2, 10), generator=g)
    if model_type in SEQ2SEQ: return dict(input_ids=ids, labels=torch.randint(3, V, (2, 6), generator=g))
    return dict(input_ids=ids, labels=ids.clone())


def logical_grad(module):
    "The (out, in) gradient of a linear layer's weight (GPT-2's Conv1D stores (in, out))."
    return module.weight.grad.t() if isinstance(module, Conv1D) else module.weight.grad


def relative(a, b): return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


EXPERT_PARAMETERS = ["experts.gate_up_proj", "experts.down_proj"]  # fused MoE experts (transformers 5), as PEFT's target_parameters
MOE_ONLY = ["phimoe", "gpt_oss", "llama4_text"]  # MoE decoders with fused experts beyond the causal list above


def expert_weights(model):
    "The fused expert parameters (experts, rows, cols) of `model`, by name."
    return {n: p for n, p in model.named_parameters() if p.dim() == 3 and n.endswith(tuple(EXPERT_PARAMETERS))}


def expert_mask(weight, sel, name):
    "A boolean mask of the fused expert weight `name` (experts, rows, cols) over the blocks `sel` chose in each of its experts."
    from smt_nb.experts import expert_matrix_name
    mask, b = torch.zeros_like(weight, dtype=torch.bool), sel.block_size
    for e in range(weight.shape[0]):
        for r, c in sel.blocks[expert_matrix_name(name, e)].tolist(): mask[e, r * b:(r + 1) * b, c * b:(c + 1) * b] = True
    return mask


def check_step_equals_masked_dense(model_type, model, data, lr=0.1):
    """One SGD step of `model`'s SMT deltas against the dense gradient of the same targets (2-D and fused experts) of a fresh base,
    masked to the chosen blocks (norm-relative < 1e-4); returns {expert weight name: its mask}."""
    from smt_nb.experts import smt_experts
    from smt_nb.train import smt_parameters
    layers, experts, sel = smt_layers(model), smt_experts(model), model.smt_selection
    dense = build(model_type)  # the same model, its target weights trainable, everything else frozen
    dense.requires_grad_(False)
    for n in layers: dense.get_submodule(n).weight.requires_grad_(True)
    for n in experts: dense.get_parameter(n).requires_grad_(True)
    dense(**data).loss.backward()
    opt = torch.optim.SGD(smt_parameters(model), lr=lr)
    model(**data).loss.backward(); opt.step(); opt.zero_grad()
    for n, l in layers.items():
        assert relative(l.smt_delta.detach(), -lr * gather_blocks(logical_grad(dense.get_submodule(n)), l.grid, l.blocks)) < 1e-4, n
    masks = {}
    for n, m in experts.items():
        W = dense.get_parameter(n)
        masks[n] = expert_mask(W, sel, n)
        assert relative(m.delta_weight(), (-lr * W.grad * masks[n]).float()) < 1e-4, n
    return masks


def check_end_to_end(model_type, config, tmp_path):
    """Prepare with `config` (GW), then: one SGD step equals the dense step masked to the chosen blocks (2-D targets and expert
    matrices), save → load is bitwise, merge gives the same logits, generate runs; returns the SMT layers."""
    from smt_nb.experts import smt_experts
    data = batch(model_type)
    model = prepare_smt(build(model_type), config, dataloader=[data])
    layers, experts, sel = smt_layers(model), smt_experts(model), model.smt_selection
    assert layers or experts, "no targets"

    check_step_equals_masked_dense(model_type, model, data)

    with torch.no_grad(): logits = model(**data).logits
    model.save_pretrained(tmp_path)
    loaded = load_smt(build(model_type), tmp_path)
    assert all(torch.equal(a.smt_delta, b.smt_delta) for a, b in zip(layers.values(), smt_layers(loaded).values()))
    assert all(torch.equal(experts[n].smt_delta, m.smt_delta) for n, m in smt_experts(loaded).items()) and len(smt_experts(loaded)) == len(experts)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data).logits, logits)
        merged = merge_and_unload(loaded)
        torch.testing.assert_close(merged(**data).logits, logits, rtol=1e-4, atol=1e-5)
    if model_type not in MASKED + SEQ2SEQ + VISION:
        out = merged.generate(data["input_ids"][:1, :4], max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 6)
    return layers


@pytest.mark.parametrize("model_type", list(AUTO) + MOE_ONLY)
def test_architecture_end_to_end(model_type, tmp_path):
    "Default targets (attention Q/K/V; encoder-decoders: self-attention), every matrix its share of blocks."
    config = SMTConfig(block_size=16, sparsity=0.1, method="gw", warmup_steps=1, budget="per_matrix")
    assert check_end_to_end(model_type, config, tmp_path), "no default targets"


@pytest.mark.parametrize("model_type", list(AUTO) + MOE_ONLY)
def test_all_linear_and_experts(model_type, tmp_path):
    "Every linear layer but the output head (PEFT's 'all-linear'), plus the fused expert weights of MoE types."
    experts = list(expert_weights(build(model_type)))
    config = SMTConfig(block_size=16, sparsity=0.1, method="gw", warmup_steps=1, budget="per_matrix", target_modules="all-linear",
                       exclude_modules=["dt_proj"] if "mamba" in model_type else None,  # Mamba reads dt_proj's weight outside its forward
                       target_parameters=EXPERT_PARAMETERS if experts else None)
    check_end_to_end(model_type, config, tmp_path)
