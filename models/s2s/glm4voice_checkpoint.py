"""GLM-4-Voice-9B's language model on transformers' own GLM classes.

The checkpoint (``THUDM/glm-4-voice-9b``) is a ChatGLM one: ``config.json``
has ``model_type: chatglm`` and ships its own modelling code
(``trust_remote_code``). Its architecture is GLM-4-9B's, which transformers
implements as ``GlmForCausalLM`` (``model_type: glm``), so the model loads with
no remote code: its config fields and parameter names are mapped here, the way
transformers' ``models/glm/convert_glm_weights_to_hf.py`` maps GLM-4-9B (plus
the split of the fused ``query_key_value`` into the q/k/v projections that
``GlmAttention`` has). A folder already in transformers' GLM format loads
as is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# ChatGLM config.json field -> GlmConfig argument (the plain renames).
CONFIG_RENAMES = {
    "padded_vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "kv_channels": "head_dim",
    "attention_dropout": "attention_dropout",
    "seq_length": "max_position_embeddings",
    "layernorm_epsilon": "rms_norm_eps",
    "add_qkv_bias": "attention_bias",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}

_LAYER = r"transformer\.encoder\.layers\.(\d+)\."
# ChatGLM parameter name -> GlmForCausalLM parameter name (None: dropped).
_RENAMES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"transformer\.embedding\.word_embeddings\.weight"), "model.embed_tokens.weight"),
    (re.compile(r"transformer\.encoder\.final_layernorm\.weight"), "model.norm.weight"),
    (re.compile(r"transformer\.output_layer\.weight"), "lm_head.weight"),
    (re.compile(r"transformer\.rotary_pos_emb\.inv_freq"), None),  # recomputed from the config
    (re.compile(_LAYER + r"input_layernorm\.weight"), r"model.layers.\1.input_layernorm.weight"),
    (
        re.compile(_LAYER + r"post_attention_layernorm\.weight"),
        r"model.layers.\1.post_attention_layernorm.weight",
    ),
    (
        re.compile(_LAYER + r"self_attention\.dense\.weight"),
        r"model.layers.\1.self_attn.o_proj.weight",
    ),
    (
        re.compile(_LAYER + r"mlp\.dense_h_to_4h\.weight"),
        r"model.layers.\1.mlp.gate_up_proj.weight",
    ),
    (re.compile(_LAYER + r"mlp\.dense_4h_to_h\.weight"), r"model.layers.\1.mlp.down_proj.weight"),
]
_QKV = re.compile(_LAYER + r"self_attention\.query_key_value\.(weight|bias)")


def glm_config_kwargs(chatglm: dict[str, Any]) -> dict[str, Any]:
    """GlmConfig arguments from a ChatGLM ``config.json``."""
    kwargs = {new: chatglm[old] for old, new in CONFIG_RENAMES.items() if old in chatglm}
    heads = int(chatglm["num_attention_heads"])
    kwargs["num_key_value_heads"] = (
        int(chatglm["multi_query_group_num"]) if chatglm.get("multi_query_attention") else heads
    )
    kwargs.setdefault("head_dim", int(chatglm["hidden_size"]) // heads)
    kwargs["rope_theta"] = 10_000.0 * float(chatglm.get("rope_ratio", 1.0))
    kwargs["tie_word_embeddings"] = False  # ChatGLM has its own output layer
    unsupported = [
        name
        for name, wanted in (
            ("rmsnorm", True),
            ("post_layer_norm", True),
            ("apply_residual_connection_post_layernorm", False),
            ("add_bias_linear", False),
        )
        if name in chatglm and bool(chatglm[name]) != wanted
    ]
    if unsupported:
        raise ValueError(f"not a GLM-4 architecture (config sets {', '.join(unsupported)})")
    return kwargs


def glm_state_dict(chatglm: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """ChatGLM tensors renamed (and the fused q/k/v split) for GlmForCausalLM;
    ``kwargs``: what ``glm_config_kwargs`` returned. KeyError for a name it
    does not know (a checkpoint of another architecture)."""
    q_size = int(kwargs["num_attention_heads"]) * int(kwargs["head_dim"])
    kv_size = int(kwargs["num_key_value_heads"]) * int(kwargs["head_dim"])
    out: dict[str, Any] = {}
    for name, tensor in chatglm.items():
        qkv = _QKV.fullmatch(name)
        if qkv is not None:
            layer, kind = qkv.groups()
            q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"model.layers.{layer}.self_attn.{proj}.{kind}"] = part.contiguous()
            continue
        for pattern, replacement in _RENAMES:
            if pattern.fullmatch(name):
                if replacement is not None:
                    out[pattern.sub(replacement, name)] = tensor
                break
        else:
            raise KeyError(f"unknown ChatGLM parameter {name!r}")
    return out


def glm_config(chatglm: dict[str, Any]) -> Any:
    from transformers import GlmConfig

    return GlmConfig(**glm_config_kwargs(chatglm))


def load_language_model(path: str | Path, device: str, dtype: str) -> tuple[Any, list[int]]:
    """(GlmForCausalLM in eval mode on ``device``, its end-of-reply ids) from a
    local folder: ChatGLM format (the published checkpoint) or transformers'
    GLM format. Never downloads."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    torch_dtype = getattr(torch, dtype)
    model: Any
    if config.get("model_type") != "chatglm":
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch_dtype
        )
    else:
        kwargs = glm_config_kwargs(config)
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        tensors: dict[str, Any] = {}
        for shard in shards:
            tensors.update(load_file(str(shard)))
        glm = glm_config(config)
        with torch.device("meta"):  # no random init of 9B parameters
            model = GlmForCausalLM(glm)
        model.load_state_dict(glm_state_dict(tensors, kwargs), strict=True, assign=True)
        # The rotary frequencies are buffers, not in the checkpoint: made anew
        # off the meta device.
        model.model.rotary_emb = GlmRotaryEmbedding(config=glm)
        model = model.to(torch_dtype)
    model = model.to(device).eval()
    end = model.config.eos_token_id
    return model, [int(i) for i in (end if isinstance(end, list) else [end]) if i is not None]
