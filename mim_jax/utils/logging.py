"""Progress lines on stdout, from process 0 only (every process runs the same program; one copy is enough)."""

from __future__ import annotations


def log(msg: str) -> None:
  import jax

  if jax.process_index() == 0:
    print(msg, flush=True)
