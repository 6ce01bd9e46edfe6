"""A guide_jax SentencePiece vocabulary as a Hugging Face tokenizer (tokenizer.json).

    export_tokenizer(vocab_model, out_dir, escape_newlines=True) -> out_dir

`transformers.AutoTokenizer.from_pretrained(out_dir)` then encodes text to the ids the run's data
was made with: the tokenizers pipeline is built by transformers' own SentencePiece converter
(SpmConverter.build_tokenizer_from_spm_proto: the model's normalizer spec, BPE merges ranked by
piece score, byte fallback, user-defined pieces whole), in legacy prefix mode, which reproduces
SentencePiece's dummy prefix after leading spaces are removed. escape_newlines prepends the built-in
corpora's escaping (guide_jax.data.corpus.encode_document: backslash -> two, newline -> backslash-n).
Equality with SentencePiece is tested on the downstream requests in tests/test_hf_lmeval.py.
Needs the `hf` extra (transformers, tokenizers, protobuf).
"""
import json
import os

from guide_jax.data import atomic


def build_tokenizer(vocab_model: str, *, escape_newlines: bool):
  """(tokenizers.Tokenizer, {'eos_token', 'pad_token', 'unk_token'}) for a SentencePiece BPE .model."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  from tokenizers import normalizers  # pylint: disable=g-import-not-at-top
  from transformers.convert_slow_tokenizer import SpmConverter  # pylint: disable=g-import-not-at-top

  proto = sentencepiece_model_pb2.ModelProto()
  with open(vocab_model, "rb") as f:
    proto.ParseFromString(f.read())
  if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
    raise ValueError(f"{vocab_model}: only SentencePiece BPE models are supported (guide_jax's vocab)")
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
  if escape_newlines:
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("\\", "\\\\"), normalizers.Replace("\n", "\\n"), tokenizer.normalizer])
  spec = proto.trainer_spec
  special = {"eos_token": proto.pieces[spec.eos_id].piece if spec.eos_id >= 0 else None,
             "pad_token": proto.pieces[spec.pad_id].piece if spec.pad_id >= 0 else None,
             "unk_token": proto.pieces[spec.unk_id].piece if spec.unk_id >= 0 else None,
             "bos_token": proto.pieces[spec.bos_id].piece if spec.bos_id >= 0 else None}
  return tokenizer, special


def export_tokenizer(vocab_model: str, out_dir: str, *, escape_newlines: bool,
                     model_max_length: int = 2048) -> str:
  """Writes out_dir/{tokenizer.json, tokenizer_config.json} (each atomically); returns out_dir."""
  tokenizer, special = build_tokenizer(vocab_model, escape_newlines=escape_newlines)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(model_max_length),
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            **special}
  atomic.atomic_write_text(os.path.join(out_dir, "tokenizer.json"), tokenizer.to_str())
  atomic.atomic_write_text(os.path.join(out_dir, "tokenizer_config.json"), json.dumps(config, indent=2) + "\n")
  return out_dir
