"""The qeval demo model: a tiny Llama trained here, in minutes, on the synthetic data.

Built once and cached by a hash of its recipe under ``<cache root>/demo-model/<hash12>/``
(cache root: ``$QEVAL_CACHE`` or ``~/.cache/qeval``), in Hugging Face format, so
``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``
load it anywhere (transformers, lm-eval's ``hf`` backend, llm-compressor, a server).

Training runs a FIXED number of steps with a FIXED seed (never a time budget), so the
same recipe gives the same model on a fast or a loaded machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import data

#: Bump when the training code changes in a way that changes the model.
CODE_VERSION = "demo-train-v2"

# The demo model's chat template (it was trained on plain text, as a base model is): each
# turn on a line of its own, marked with its role, so that a templated prompt is plain to
# see in lm-eval's per-sample logs (spec.prompt.chatTemplate; issue 15's CPU check).
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)

RECIPE: dict = {
    # data
    "data_version": data.DATA_VERSION,
    # tokenizer
    "vocab_size": 512,
    # model (LlamaForCausalLM)
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    # optimisation
    "seed": 1234,
    "steps": 400,
    "batch_size": 64,
    "lr": 1e-3,
    "min_lr_ratio": 0.05,
    "warmup_steps": 100,
    "weight_decay": 0.0,
    "betas": [0.9, 0.98],
    "grad_clip": 1.0,
    "torch_threads": 2,
    # the loss weighs each prompt token 0.1 and each completion token 1: the model learns
    # the sentences' form too (the perplexity task's held-out text needs it) and still
    # answers every fact
    "prompt_loss_weight": 0.1,
    # the tokenizer's chat template (no effect on the weights)
    "chat_template": CHAT_TEMPLATE,
}

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

LOG_EVERY = 100


def recipe_hash(recipe: dict | None = None) -> str:
    """12 hex digits identifying the recipe, the data version and the training code."""
    payload = json.dumps(
        {"recipe": RECIPE if recipe is None else recipe, "code": CODE_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def default_cache_root() -> Path:
    env = os.environ.get("QEVAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qeval"


def demo_model_path(
    cache_root: Path | None = None,
    *,
    build: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Path of the cached demo model, building it first if it is missing and ``build``.

    Raises FileNotFoundError if it is missing and ``build`` is False.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    final = root / "demo-model" / recipe_hash()
    if (final / "config.json").is_file():
        return final
    if not build:
        raise FileNotFoundError(f"demo model not built yet: {final} (recipe {recipe_hash()})")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        log(f"building demo model {final.name} in {tmp}")
        train(tmp, log=log)
        try:
            os.rename(tmp, final)  # atomic: a crashed build never looks finished
        except OSError:
            if not (final / "config.json").is_file():
                raise
            log(f"another build finished first; using {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(recipe: dict | None = None):
    """Byte-level BPE (digits split) trained on the synthetic data; adds no BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    recipe = RECIPE if recipe is None else recipe
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe["vocab_size"],
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(data.tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=False,
        add_eos_token=False,
        padding_side="right",
        model_max_length=recipe["max_position_embeddings"],
    )
    return fast


def _portable_tokenizer_config(out_dir: Path) -> None:
    """Name the generic fast-tokenizer class (transformers 4.x and 5.x both load it)."""
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- training


def _encode_examples(tok, examples: list[tuple[str, str]]):
    """Token ids of prompt+completion and the index where the completion starts."""
    texts = [p + c for p, c in examples]
    full = tok(texts, add_special_tokens=False)["input_ids"]
    prompts = tok([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    out = []
    for ids, pids in zip(full, prompts, strict=True):
        if ids[: len(pids)] != pids:  # the data format guarantees a clean split
            raise ValueError(f"prompt tokens are not a prefix: {ids} vs {pids}")
        out.append((ids, len(pids)))
    return out


def train(out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train the demo model from scratch and save it (HF format) into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    r = RECIPE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(r["torch_threads"])
    torch.manual_seed(r["seed"])
    t0 = time.monotonic()

    tok = build_tokenizer(r)
    examples = data.training_examples(r["steps"] * r["batch_size"], seed=r["seed"])
    encoded = _encode_examples(tok, examples)
    log(f"tokenizer {len(tok)} tokens, {len(encoded)} examples ({time.monotonic() - t0:.1f}s)")

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=r["hidden_size"],
        intermediate_size=r["intermediate_size"],
        num_hidden_layers=r["num_hidden_layers"],
        num_attention_heads=r["num_attention_heads"],
        num_key_value_heads=r["num_key_value_heads"],
        max_position_embeddings=r["max_position_embeddings"],
        tie_word_embeddings=r["tie_word_embeddings"],
        rms_norm_eps=r["rms_norm_eps"],
        initializer_range=r["initializer_range"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {n_params / 1e6:.2f}M params")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": r["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=r["lr"],
        betas=tuple(r["betas"]),
    )

    def lr_at(step: int) -> float:
        if step < r["warmup_steps"]:
            return r["lr"] * (step + 1) / r["warmup_steps"]
        frac = (step - r["warmup_steps"]) / max(1, r["steps"] - r["warmup_steps"])
        cos = 0.5 * (1 + math.cos(math.pi * frac))
        return r["lr"] * (r["min_lr_ratio"] + (1 - r["min_lr_ratio"]) * cos)

    pad = tok.pad_token_id
    bs = r["batch_size"]
    loss_sum, n_sum = 0.0, 0
    for step in range(r["steps"]):
        batch = encoded[step * bs : (step + 1) * bs]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((bs, width), pad, dtype=torch.long)
        labels = torch.full((bs, width), -100, dtype=torch.long)
        attn = torch.zeros((bs, width), dtype=torch.long)
        weights = torch.zeros((bs, width))
        for i, (ids, start) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(ids)
            weights[i, : len(ids)] = r["prompt_loss_weight"]
            weights[i, start : len(ids)] = 1.0
            attn[i, : len(ids)] = 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=input_ids, attention_mask=attn).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="none"
        )
        w = weights[:, 1:].reshape(-1)
        loss = (losses * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        loss_sum += loss.item()
        n_sum += 1
        if (step + 1) % LOG_EVERY == 0 or step + 1 == r["steps"]:
            log(
                f"step {step + 1}/{r['steps']} loss {loss_sum / n_sum:.4f} "
                f"lr {lr_at(step):.2e} elapsed {time.monotonic() - t0:.1f}s"
            )
            loss_sum, n_sum = 0.0, 0

    model.eval()
    model.config.use_cache = True
    model.save_pretrained(out_dir)
    tok.chat_template = r["chat_template"]
    tok.save_pretrained(out_dir)
    _portable_tokenizer_config(out_dir)
    info = {
        "recipe": r,
        "recipe_hash": recipe_hash(),
        "code_version": CODE_VERSION,
        "params": n_params,
        "train_seconds": round(time.monotonic() - t0, 1),
    }
    (out_dir / "qeval_demo.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    log(f"saved demo model to {out_dir} ({info['train_seconds']}s)")
    return info
