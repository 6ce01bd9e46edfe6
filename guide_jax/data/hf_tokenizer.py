"""Hugging Face tokenizers: the teacher's own (read, encode, fingerprint) and ours written as one.

    tok = load(path, eos_token=None)   # a model directory, a tokenizer.json or a SentencePiece .model
    tok.encode(texts) -> [np.ndarray int32 ids, one per text: [BOS] + text's ids + [EOS]]
    tok.fingerprint    -> {"kind", "sha256", "vocab_size", "bos_id", "eos_id"}
    fingerprint(path)  -> the same, for checking a teacher's tokenizer against prepared data's
    check_same(data, expected, ...)       TokenizerError unless data was tokenized by `expected`
    export_tokenizer(vocab_model, out_dir, escape_newlines=True)  a guide_jax SentencePiece vocab as
                                           tokenizer.json (below; needs the `hf` extra)
    llama3_from_tiktoken(file, out_dir)   Meta's Llama 3 tokenizer as a Hugging Face directory

Reading (no torch, no transformers):
  * a directory: its tokenizer.json (read with `tokenizers`, the Rust library transformers' fast
    tokenizers wrap), else its tokenizer.model (SentencePiece); tokenizer_config.json next to it
    names the special tokens (`eos_token`, `bos_token`, `add_bos_token`) as transformers reads them.
  * a tokenizer.json file (tokenizer_config.json beside it is read when present).
  * a SentencePiece .model file (its own bos/eos ids).
Documents are encoded the way the family pretrains: the tokenizer's own post-processor adds what
it adds for one sequence (Llama 3 and Gemma: BOS; Qwen: nothing), SentencePiece models with a BOS
id prepend it (Llama 2, Mistral, Gemma), and every document ends with EOS (appended when the
tokenizer did not add it). `eos_token` overrides tokenizer_config.json's choice (e.g. Qwen
instruct models name <|im_end|>; pretraining text ends documents with <|endoftext|>).

Both backends encode a batch on every core: `tokenizers` with its Rayon pool (encode_batch_fast
releases the GIL), SentencePiece with num_threads=os.cpu_count().

Fingerprint: sha256 of the tokenizer's canonical serialization (`tokenizers`' to_str(), i.e.
independent of the JSON file's formatting; a SentencePiece model's serialized proto), with the
ids the documents were joined with. Two tokenizers with the same fingerprint map every text to
the same ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from guide_jax import fileio

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
KINDS = ("tokenizers", "sentencepiece")
# Files a model directory carries that describe its tokenizer (copied with an exported student).
TOKENIZER_FILES = (TOKENIZER_JSON, SENTENCEPIECE_MODEL, TOKENIZER_CONFIG, "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


class TokenizerError(ValueError):
  """A tokenizer is missing, unreadable, or does not say how documents end."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A loaded tokenizer. file: the file it was read from (copied into prepared data).

  vocab_size: the number of ids it can produce (added tokens included). bos_id: the id starting
  every document, or None. eos_id: the id ending every document.
  """
  kind: str
  file: str
  vocab_size: int
  bos_id: Optional[int]
  eos_id: int
  sha256: str
  _encode: Callable[[Sequence[str]], list]

  @property
  def fingerprint(self) -> dict:
    return {"kind": self.kind, "sha256": self.sha256, "vocab_size": self.vocab_size,
            "bos_id": self.bos_id, "eos_id": self.eos_id}

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """texts [B] -> B int32 arrays [len_i], each ending in eos_id (starting with bos_id if set)."""
    out = []
    for ids in self._encode(list(texts)):
      if not ids or ids[-1] != self.eos_id:
        ids = [*ids, self.eos_id]
      out.append(np.asarray(ids, dtype=np.int32))
    return out


def _special(config: dict, key: str) -> Optional[str]:
  """tokenizer_config.json's special token `key` (a string or an AddedToken dict) or None."""
  value = config.get(key)
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def locate(path: str) -> tuple[str, str, dict]:
  """path -> (kind, tokenizer file, tokenizer_config.json contents or {})."""
  path = os.fspath(path)
  if os.path.isdir(path):
    config = fileio.read_json_object(os.path.join(path, TOKENIZER_CONFIG), TOKENIZER_CONFIG, missing={},
                                    error=TokenizerError)
    for name, kind in ((TOKENIZER_JSON, "tokenizers"), (SENTENCEPIECE_MODEL, "sentencepiece")):
      if os.path.isfile(os.path.join(path, name)):
        return kind, os.path.join(path, name), config
    raise TokenizerError(f"{path} holds neither {TOKENIZER_JSON} nor {SENTENCEPIECE_MODEL}")
  if not os.path.isfile(path):
    raise TokenizerError(f"tokenizer {path!r} does not exist (expected a model directory, a "
                         f"{TOKENIZER_JSON} or a SentencePiece .model file)")
  config = fileio.read_json_object(os.path.join(os.path.dirname(path), TOKENIZER_CONFIG), TOKENIZER_CONFIG,
                                  missing={}, error=TokenizerError)
  kind = "tokenizers" if path.endswith(".json") else "sentencepiece"
  return kind, path, config


def load(path: str, eos_token: Optional[str] = None) -> Tokenizer:
  """The tokenizer at `path` (module docstring). Raises TokenizerError before any encoding."""
  kind, file, config = locate(path)
  if kind == "tokenizers":
    return _load_tokenizers(file, config, eos_token)
  return _load_sentencepiece(file, config, eos_token)


def _load_tokenizers(file: str, config: dict, eos_token: Optional[str]) -> Tokenizer:
  import tokenizers  # pylint: disable=g-import-not-at-top

  try:
    tok = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # tokenizers raises a bare Exception for a malformed file
    raise TokenizerError(f"{file} is not a `tokenizers` tokenizer.json: {e}") from e
  eos = eos_token or _special(config, "eos_token")
  if eos is None:
    raise TokenizerError(f"cannot tell which token ends a document: no eos_token in "
                         f"{TOKENIZER_CONFIG} next to {file}; pass --eos_token")
  eos_id = tok.token_to_id(eos)
  if eos_id is None:
    raise TokenizerError(f"EOS token {eos!r} is not in {file}'s vocabulary")
  # What the post-processor puts around one sequence: BOS when it prefixes one.
  bare, full = tok.encode("", add_special_tokens=False).ids, tok.encode("", add_special_tokens=True).ids
  if bare:
    raise TokenizerError(f"{file} encodes the empty text as {bare}; cannot find its special tokens")
  bos_id = full[0] if full and full[0] != eos_id else None
  encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets (tokenizers >= 0.21)

  def encode(texts):
    return [e.ids for e in encode_batch(texts, add_special_tokens=True)]

  digest = hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
  return Tokenizer("tokenizers", file, int(tok.get_vocab_size(with_added_tokens=True)), bos_id,
                   int(eos_id), digest, encode)


def _load_sentencepiece(file: str, config: dict, eos_token: Optional[str]) -> Tokenizer:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  with open(file, "rb") as f:
    proto = f.read()
  try:
    sp = spm.SentencePieceProcessor(model_proto=proto)
  except Exception as e:  # sentencepiece raises RuntimeError / OSError for a bad proto
    raise TokenizerError(f"{file} is not a SentencePiece model: {e}") from e
  eos = eos_token or _special(config, "eos_token")
  eos_id = sp.piece_to_id(eos) if eos else sp.eos_id()
  if eos_id < 0 or (eos and sp.id_to_piece(eos_id) != eos):
    raise TokenizerError(f"{file} has no EOS piece{f' {eos!r}' if eos else ''}; pass --eos_token")
  if eos_id != sp.eos_id():
    raise TokenizerError(f"EOS {eos!r} is not {file}'s own EOS piece {sp.id_to_piece(sp.eos_id())!r}; "
                         "a SentencePiece model ends documents with its own")
  bos_id = sp.bos_id() if config.get("add_bos_token", True) else -1
  bos_id = None if bos_id < 0 else int(bos_id)
  threads = max(1, os.cpu_count() or 1)

  def encode(texts):  # BOS and EOS added in C++
    return sp.encode(texts, out_type=int, add_bos=bos_id is not None, add_eos=True, num_threads=threads)

  digest = hashlib.sha256(sp.serialized_model_proto()).hexdigest()
  return Tokenizer("sentencepiece", file, int(sp.get_piece_size()), bos_id, int(eos_id), digest, encode)


def fingerprint(path: str, eos_token: Optional[str] = None) -> dict:
  """load(path, eos_token).fingerprint: what prepared data records of its tokenizer."""
  return load(path, eos_token).fingerprint


def check_same(data_fingerprint: Optional[dict], expected: dict, data_where: str,
               expected_where: str) -> None:
  """Raises TokenizerError unless data made with `data_fingerprint` was tokenized by `expected`.

  Data without a recorded tokenizer fingerprint (made by an older prepare or its own
  SentencePiece training) is refused too: its ids mean something else.
  """
  hint = ("prepare it with the teacher's tokenizer: python -m guide_jax.data.prepare --tokenizer=TEACHER_DIR"
          if expected.get("kind") in KINDS else "train on data made with the same vocabulary (the teacher's "
          "DATA_DIR, or its CORPUS and VOCAB_SIZE)")
  if not data_fingerprint:
    raise TokenizerError(f"{data_where} records no tokenizer fingerprint, so it was not tokenized by "
                         f"the tokenizer of {expected_where}; {hint}")
  keys = ("kind", "sha256", "bos_id", "eos_id")
  diff = [f"{k} {data_fingerprint.get(k)!r} != {expected.get(k)!r}" for k in keys
          if data_fingerprint.get(k) != expected.get(k)]
  if diff:
    raise TokenizerError(f"{data_where} was tokenized by another tokenizer than {expected_where}'s "
                         f"({'; '.join(diff)}); {hint}")


# Llama 3's 256 special tokens, as Meta's tokenizer defines them after the 128000 BPE ranks.
LLAMA3_SPECIAL_TOKENS = tuple(
    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(2, 247)])


def llama3_from_tiktoken(tiktoken_file: str, out_dir: str) -> str:
  """Meta's original Llama 3 tokenizer (tiktoken BPE ranks) -> a Hugging Face tokenizer directory.

  The conversion is transformers' own (its TikToken converter, run by AutoTokenizer on a
  tokenizer.model that is not SentencePiece; needs the `tiktoken` package): tokenizer.json +
  tokenizer_config.json with <|begin_of_text|> as BOS (added to every sequence) and
  <|end_of_text|> as EOS, as the Llama 3 base models ship. Returns out_dir.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    shutil.copy(tiktoken_file, os.path.join(tmp, SENTENCEPIECE_MODEL))
    with open(os.path.join(tmp, TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
      json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                 "eos_token": "<|end_of_text|>", "add_bos_token": True,
                 "extra_special_tokens": list(LLAMA3_SPECIAL_TOKENS),
                 "model_input_names": ["input_ids", "attention_mask"]}, f)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "not SentencePiece, falling back to TikToken": expected
    try:
      tok = transformers.AutoTokenizer.from_pretrained(tmp)
    finally:
      transformers.logging.set_verbosity(verbosity)
    if len(tok) != 128256 or tok.bos_token_id != 128000 or tok.eos_token_id != 128001:
      raise TokenizerError(f"{tiktoken_file} did not convert to Llama 3's 128256-id tokenizer "
                           f"(got {len(tok)} ids, bos {tok.bos_token_id}, eos {tok.eos_token_id})")
    tok.save_pretrained(out_dir)
  return out_dir


# --------------------------------------------------------------------- a guide_jax vocab for Hugging Face
# export_tokenizer: `transformers.AutoTokenizer.from_pretrained(out_dir)` then encodes text to the ids
# the run's data was made with: the tokenizers pipeline is built by transformers' own SentencePiece
# converter (SpmConverter.build_tokenizer_from_spm_proto: the model's normalizer spec, BPE merges
# ranked by piece score, byte fallback, user-defined pieces whole), in legacy prefix mode, which
# reproduces SentencePiece's dummy prefix after leading spaces are removed. escape_newlines prepends
# the built-in corpora's escaping (guide_jax.corpora.corpus.encode_document: backslash -> two,
# newline -> backslash-n). Equality with SentencePiece is tested on the downstream requests in
# tests/test_hf_lmeval.py. Needs the `hf` extra (transformers, tokenizers, protobuf).
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
  fileio.atomic_write_text(os.path.join(out_dir, TOKENIZER_JSON), tokenizer.to_str())
  fileio.atomic_write_text(os.path.join(out_dir, TOKENIZER_CONFIG), json.dumps(config, indent=2) + "\n")
  return out_dir
