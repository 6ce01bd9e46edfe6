"""The teacher's own tokenizer: Hugging Face `tokenizers` (tokenizer.json) or SentencePiece.

    tok = load(path, eos_token=None)   # a model directory, a tokenizer.json or a SentencePiece .model
    tok.encode(texts) -> [np.ndarray int32 ids, one per text: [BOS] + text's ids + [EOS]]
    tok.fingerprint    -> {"kind", "sha256", "vocab_size", "bos_id", "eos_id"}
    fingerprint(path)  -> the same, for checking a teacher's tokenizer against prepared data's

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


def _read_config(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise TokenizerError(f"{path} is unreadable or not JSON: {e}") from e
  if not isinstance(config, dict):
    raise TokenizerError(f"{path} is not a JSON object")
  return config


def locate(path: str) -> tuple[str, str, dict]:
  """path -> (kind, tokenizer file, tokenizer_config.json contents or {})."""
  path = os.fspath(path)
  if os.path.isdir(path):
    config = _read_config(os.path.join(path, TOKENIZER_CONFIG))
    for name, kind in ((TOKENIZER_JSON, "tokenizers"), (SENTENCEPIECE_MODEL, "sentencepiece")):
      if os.path.isfile(os.path.join(path, name)):
        return kind, os.path.join(path, name), config
    raise TokenizerError(f"{path} holds neither {TOKENIZER_JSON} nor {SENTENCEPIECE_MODEL}")
  if not os.path.isfile(path):
    raise TokenizerError(f"tokenizer {path!r} does not exist (expected a model directory, a "
                         f"{TOKENIZER_JSON} or a SentencePiece .model file)")
  config = _read_config(os.path.join(os.path.dirname(path), TOKENIZER_CONFIG))
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
