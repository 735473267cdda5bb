"""Faster ways to run the transformers reference: fixed shapes (length buckets), padding-free packing,
torch.compile and CUDA graphs, all through one forward pass.

Every layout is the same three host arrays per batch: token ids, position ids and a document id per
token (-1 for padding). The attention mask is built from them on the device (`same document and
causal`) and handed to the decoder as a 4D mask or a BlockMask (transformers uses either as-is, so its
own padding and packed-sequence heuristics are bypassed); every token is scored and the
score of a text is read at its last token. A padded batch is one document a row; a packed row holds
several texts, their positions restarting at 0, so no text attends to another (block-diagonal
attention) and no compute goes to padding beyond each row's tail.

Attention "sdpa" takes a dense bool mask: on rows of a few hundred tokens the attention over other
texts' blocks that it computes and discards is a few percent of the linear layers' work, and it is
the one CUDA graphs capture. "flex" takes a flex-attention BlockMask, which skips those blocks
(flash-attn's varlen kernel would too, but it has no wheel for the H200's torch 2.11+cu130).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

PAD_DOC = -1  # document id of padding tokens: they attend only to each other, never to a text


@dataclass
class Layout:
    """One batch as the fast paths take it. `ends[i]` is the flat index (row * width + column) of text
    `texts[i]`'s last token; `texts` are positions in the id list it was packed from (hf_rungs.full_layouts
    packs a cycled stream, so there they count texts and may exceed the list's length)."""

    input_ids: np.ndarray  # (rows, width) int64
    position_ids: np.ndarray  # (rows, width) int64
    doc_ids: np.ndarray  # (rows, width) int32, PAD_DOC on padding
    ends: np.ndarray  # (texts,) int64
    texts: list[int] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def tokens(self) -> int:
        """Tokens of the texts (padding not counted): what MFU counts."""
        return int((self.doc_ids != PAD_DOC).sum())


def parse_buckets(value: str) -> list[int]:
    """'32,64' -> [32, 64]: padded lengths a batch is rounded up to."""
    buckets = sorted({int(v) for v in value.split(",") if v.strip()})
    if not buckets or buckets[0] < 1:
        raise ValueError(f"length buckets {value!r}: expected positive whole numbers, e.g. 32,64")
    return buckets


def bucket_for(length: int, buckets: Sequence[int], max_length: int) -> int:
    """The smallest bucket that holds `length`; past the largest, max_length (one more fixed shape)."""
    for b in buckets:
        if length <= b:
            return b
    return max(max_length, length)


def padded(ids: Sequence[Sequence[int]], width: int, rows: int | None = None, pad_id: int = 0,
           indices: Sequence[int] | None = None) -> Layout:
    """Right-padded rows of one text each, `width` wide; `rows` > len(ids) adds empty rows so every
    batch of a bucket has one shape (their scores are never read)."""
    rows = rows or len(ids)
    input_ids = np.full((rows, width), pad_id, dtype=np.int64)
    position_ids = np.zeros((rows, width), dtype=np.int64)
    doc_ids = np.full((rows, width), PAD_DOC, dtype=np.int32)
    ends = np.empty(len(ids), dtype=np.int64)
    for r, row in enumerate(ids):
        n = len(row)
        if n == 0:  # its "last token" would be the previous row's
            raise ValueError(f"text {r} of the batch has no tokens")
        input_ids[r, :n] = row
        position_ids[r, :n] = np.arange(n)
        doc_ids[r, :n] = 0
        ends[r] = r * width + n - 1
    return Layout(input_ids, position_ids, doc_ids, ends, list(indices if indices is not None else range(len(ids))))


def bucketed(ids: Sequence[Sequence[int]], buckets: Sequence[int], max_length: int, batch_size: int,
             pad_id: int = 0, indices: Sequence[int] | None = None) -> Layout:
    """A batch padded to its bucket's width and to `batch_size` rows: a fixed shape per bucket."""
    width = bucket_for(max(len(r) for r in ids), buckets, max_length)
    return padded(ids, width, rows=batch_size, pad_id=pad_id, indices=indices)


def pack(ids: Sequence[Sequence[int]], rows: int, width: int, pad_id: int = 0,
         start: int = 0) -> tuple[Layout, int]:
    """Texts from ids[start:] laid end to end into `rows` rows of `width` tokens, in order, each text
    whole in one row, its positions from 0; returns the layout and the index of the first text that
    did not fit. A text longer than `width` is an error (pick a width >= the model's max length)."""
    input_ids = np.full((rows, width), pad_id, dtype=np.int64)
    position_ids = np.zeros((rows, width), dtype=np.int64)
    doc_ids = np.full((rows, width), PAD_DOC, dtype=np.int32)
    ends, texts = [], []
    r, col, i = 0, 0, start
    while i < len(ids):
        n = len(ids[i])
        if n == 0:  # its "last token" would be its neighbour's
            raise ValueError(f"text {i} has no tokens")
        if n > width:
            raise ValueError(f"text {i} has {n} tokens, more than the packed row width {width}")
        if col + n > width:
            r, col = r + 1, 0
            if r == rows:
                break
        input_ids[r, col : col + n] = ids[i]
        position_ids[r, col : col + n] = np.arange(n)
        doc_ids[r, col : col + n] = len(texts)
        ends.append(r * width + col + n - 1)
        texts.append(i)
        col += n
        i += 1
    return Layout(input_ids, position_ids, doc_ids, np.asarray(ends, dtype=np.int64), texts), i


def pack_all(ids: Sequence[Sequence[int]], rows: int, width: int, pad_id: int = 0) -> list[Layout]:
    """Every text packed, batch after batch of the same (rows, width) shape."""
    out, start = [], 0
    while start < len(ids):
        layout, start = pack(ids, rows, width, pad_id, start)
        out.append(layout)
    return out


def scores_forward(model) -> Callable[..., Any]:
    """(input_ids, position_ids, mask) -> every token's class logits (rows, width, classes).

    A sequence classifier is a decoder (`model.base_model`) and a linear head on the last text token;
    the head is applied to every token (a few dozen outputs per token, negligible) so the shape stays
    fixed for compile and graphs, and the caller picks the texts' last tokens."""
    base, head = model.base_model, _head(model)

    def forward(input_ids, position_ids, mask):
        # use_cache=False: a decoder config says True, and a KV cache built for one forward pass is
        # memory and copies for nothing (and Python objects in a graph to capture)
        hidden = base(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False)
        return head(hidden.last_hidden_state)

    return forward


def dense_mask(doc_ids):
    """(rows, 1, width, width) bool, True where a token may attend: same document, not later (sdpa)."""
    import torch

    width = doc_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def block_mask(doc_ids):
    """The same rule as a flex-attention BlockMask: blocks wholly outside every document are skipped,
    so the attention work is that of the texts alone."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, k):
        return (doc_ids[b, q] == doc_ids[b, k]) & (q >= k)

    rows, width = doc_ids.shape
    return create_block_mask(same_document_causal, rows, None, width, width, device=doc_ids.device)


ATTENTION = {"sdpa": dense_mask, "flex": block_mask}


def _head(model):
    """The score layer of a transformers sequence classifier (Qwen2 `score`, others `classifier`)."""
    for name in ("score", "classifier"):
        layer = getattr(model, name, None)
        if layer is not None:
            return layer
    raise ValueError(f"{type(model).__name__}: no score or classifier head for the packed path")


class FastRunner:
    """Runs Layouts through `scores_forward`, optionally compiled and/or replayed from CUDA graphs (one
    graph per shape, captured on first sight). `compile_s` sums the time of each new shape's first
    call (compilation, autotuning, capture), which is outside the timed calls but recorded."""

    def __init__(self, model, device: str, *, compile_mode: str | None = None, cuda_graphs: bool = False,
                 attention: str = "sdpa", cache_dir: str | None = None):
        import torch

        if cuda_graphs and device != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if attention not in ATTENTION:
            raise ValueError(f"attention {attention!r}: expected one of {', '.join(ATTENTION)}")
        if cuda_graphs and attention != "sdpa":
            # a BlockMask is rebuilt per batch on the host side; a graph replays fixed device buffers
            raise ValueError("CUDA graphs are captured with the dense (sdpa) mask only")
        self.torch, self.device, self.model = torch, device, model
        self.mask = ATTENTION[attention]
        # the model's attention kernel follows the mask kind; restored by close()
        self._attention_before = model.config._attn_implementation
        model.set_attn_implementation("flex_attention" if attention == "flex" else "sdpa")
        self.compile_mode, self.cuda_graphs = compile_mode, cuda_graphs
        self.compile_s = 0.0
        forward = scores_forward(model)
        if compile_mode:
            if cache_dir:  # inductor's on-disk cache: a later run of the same shapes skips most compilation
                os.makedirs(cache_dir, exist_ok=True)
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
            # dynamic=False: each bucket shape is its own graph, specialised (and autotuned) for it
            forward = torch.compile(forward, mode=compile_mode, dynamic=False)
        self.forward = forward
        self._graphs: dict[tuple[int, int], tuple[Any, tuple, Any]] = {}
        self._seen: set[tuple[int, int]] = set()

    def __call__(self, layout: Layout) -> np.ndarray:
        """Class probabilities of the layout's texts (float32, host), in layout.texts order."""
        torch = self.torch
        first = layout.shape not in self._seen
        start = time.perf_counter()
        with torch.inference_mode():
            ids, positions, docs = (torch.from_numpy(a).to(self.device, non_blocking=True)
                                    for a in (layout.input_ids, layout.position_ids, layout.doc_ids))
            inputs = (ids, positions, self.mask(docs))
            logits = self._run(layout.shape, inputs)
            picked = logits.reshape(-1, logits.shape[-1])[torch.from_numpy(layout.ends).to(self.device)]
            probs = torch.softmax(picked.float(), dim=-1).cpu().numpy()
        if first:
            self._seen.add(layout.shape)
            self.compile_s += time.perf_counter() - start
        return probs

    def close(self) -> None:
        """Give the model back its own attention kernel and drop the graphs' buffers."""
        self.model.set_attn_implementation(self._attention_before)
        self._graphs.clear()

    def _run(self, shape: tuple[int, int], inputs: tuple) -> Any:
        if not self.cuda_graphs:
            return self.forward(*inputs)
        torch = self.torch
        if shape not in self._graphs:
            static = tuple(t.clone() for t in inputs)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the capture: compiles, allocates, autotunes
                for _ in range(2):
                    self.forward(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.forward(*static)
            self._graphs[shape] = (graph, static, out)
        graph, static, out = self._graphs[shape]
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return out
