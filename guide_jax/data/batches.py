"""Deterministic LM batches from a token stream: each batch is a pure function of the step.

The stream (int [N], e.g. a uint16 np.memmap of prepared data; documents concatenated,
each ending in EOS=1) is cut, without copying, into
num_rows = N // (seq_len + 1) rows of seq_len + 1 tokens (the remainder is dropped).
Epoch e visits the rows in the order rng(seed, e).permutation(num_rows) (numpy
Generator/PCG64, seeded with SeedSequence([seed, e])), or in stream order when
shuffle=False; global batch `step` is rows order[b*B:(b+1)*B] of epoch step // steps_per_epoch,
b = step % steps_per_epoch, B = global_batch_size (the last num_rows % B rows of each
epoch's order are skipped). Process p of P gets rows [p*B/P:(p+1)*B/P] of that global batch,
so resuming at any step on any number of processes reproduces the same data exactly.

Batch dict (t5x decoder-only feature names), all np.int32 [B_local, seq_len]:
  decoder_input_tokens   row[:-1]
  decoder_target_tokens  row[1:]
  decoder_loss_weights   1 where target != 0 (pad), else 0
  decoder_segment_ids    1 for real rows (0 for eval padding rows); rows are contiguous
                         chunks of the stream, so documents inside a row are separated
                         only by EOS, not by segment ids
  decoder_positions      0..seq_len-1
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

PAD_ID = 0


def _rows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
  """View (no copy, so a memmap stays on disk) of the stream as [num_rows, seq_len + 1], its dtype."""
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be a 1-D stream, got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
  num_rows = tokens.shape[0] // (seq_len + 1)
  return tokens[:num_rows * (seq_len + 1)].reshape(num_rows, seq_len + 1)


def _check_process(process_index: int, process_count: int, batch_size: int) -> int:
  """Rows per process; ValueError on a bad (process_index, process_count)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} is not divisible by process_count {process_count}")
  return batch_size // process_count


def make_batch(rows: np.ndarray, num_real: int | None = None) -> dict[str, np.ndarray]:
  """int [B, L+1] rows (any integer dtype) -> batch dict of int32 [B, L]; rows >= num_real are padding."""
  rows = np.asarray(rows, dtype=np.int32)
  b, l = rows.shape[0], rows.shape[1] - 1
  real = np.ones((b, 1), np.int32)
  if num_real is not None:
    real[num_real:] = 0
  targets = rows[:, 1:] * real
  return {
      "decoder_input_tokens": rows[:, :-1] * real,
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets != PAD_ID).astype(np.int32),
      "decoder_segment_ids": np.broadcast_to(real, (b, l)).copy(),
      "decoder_positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy(),
  }


class LMBatches:
  """Training batches: `batch(step, process_index, process_count)` is a pure function."""

  def __init__(self, tokens: np.ndarray, seq_len: int, global_batch_size: int, seed: int = 0,
               shuffle: bool = True):
    """tokens: int [N] stream (kept as is: a memmap is read row by row); raises ValueError if
    it has fewer rows than one global batch."""
    if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
      raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
    self.rows = _rows(tokens, seq_len)
    self.seq_len = int(seq_len)
    self.global_batch_size = int(global_batch_size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    if self.num_rows < self.global_batch_size:
      raise ValueError(
          f"stream of {np.asarray(tokens).shape[0]} tokens has {self.num_rows} rows of "
          f"{self.seq_len + 1} tokens, fewer than one global batch of {self.global_batch_size}")
    self._order_cache: tuple[int, np.ndarray] | None = None

  @property
  def num_rows(self) -> int:
    return self.rows.shape[0]

  @property
  def steps_per_epoch(self) -> int:
    return self.num_rows // self.global_batch_size

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int64 [num_rows]: the order rows are visited in during `epoch`."""
    if self._order_cache is not None and self._order_cache[0] == epoch:
      return self._order_cache[1]
    if self.shuffle:
      rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
      order = rng.permutation(self.num_rows)
    else:
      order = np.arange(self.num_rows)
    self._order_cache = (epoch, order)
    return order

  def row_indices(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Stream-row indices [B / process_count] of this process' part of global batch `step`."""
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be a non-negative int, got {step!r}")
    local = _check_process(process_index, process_count, self.global_batch_size)
    epoch, b = divmod(int(step), self.steps_per_epoch)
    start = b * self.global_batch_size + process_index * local
    return self.epoch_order(epoch)[start:start + local]

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    """This process' slice of global batch `step`: dict of int32 [B / process_count, seq_len]."""
    return make_batch(self.rows[self.row_indices(step, process_index, process_count)])

  def iterate(self, start_step: int = 0, process_index: int = 0, process_count: int = 1,
              num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """batch(start_step), batch(start_step + 1), ... (forever, or num_steps batches)."""
    _check_process(process_index, process_count, self.global_batch_size)
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.batch(step, process_index, process_count)
      step += 1


def num_eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int) -> int:
  """ceil(num_rows / batch_size) for `eval_batches`."""
  return -(-_rows(tokens, seq_len).shape[0] // batch_size)


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every row of the stream exactly once, in stream order, in global batches of `batch_size`.

  The last global batch is padded with all-zero rows (loss_weights 0, segment_ids 0), so
  sum(loss * loss_weights) over all batches covers each real target token once. Each
  process gets rows [p*B/P:(p+1)*B/P] of every global batch. Raises ValueError if the
  stream has no complete row.
  """
  rows = _rows(tokens, seq_len)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  local = _check_process(process_index, process_count, batch_size)
  if rows.shape[0] == 0:
    raise ValueError(f"stream of {np.asarray(tokens).shape[0]} tokens has no row of {seq_len + 1}")
  for start in range(0, rows.shape[0], batch_size):
    lo = start + process_index * local
    part = rows[lo:min(lo + local, rows.shape[0])]
    num_real = part.shape[0]
    if num_real < local:
      part = np.concatenate([part.astype(np.int32), np.zeros((local - num_real, seq_len + 1), np.int32)])
    yield make_batch(part, num_real)
