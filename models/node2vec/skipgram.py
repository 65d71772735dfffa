"""Skip-gram with negative sampling on walks: our numba trainer or gensim's Word2Vec.

Two trainers, picked by `SkipGramConfig.trainer`:

* "numba" (default): `models/node2vec/sgns.py`, word2vec's skip-gram with its
  sequential per-pair updates, trained straight from the int32 walk arrays. Its noise
  rows are drawn once per centre node for the whole window (`negatives="window"`, the
  default: a centre's window then reads a handful of rows that stay in L1) or afresh for
  every (centre, context) pair as word2vec does (`negatives="pair"`). Its rates and its
  quality against gensim on the same walks are in benchmarks/results/node2vec.md;
* "gensim": gensim's Cython SGNS, exactly what PecanPy (the reference) runs; kept as
  the reference for quality and speed comparisons.

The rest of this docstring is about the gensim path.

Walks stay compact: an int32 array (n_walks, walk_length) with -1 padding. They
reach gensim either as a restartable iterable that yields one walk at a time as
a list of ints (no strings, never all walks as Python lists), or as a corpus
file gensim reads in C++ without the GIL (`corpus="file"`, which scales with
workers on big machines).

Int tokens are node id + n_nodes, never the bare id: gensim's
`KeyedVectors.get_index(key)` looks an int up as a KEY first and only then
treats it as a slot, and `make_cum_table` calls it with slots. With keys
0..n-1 every slot is also a key, so the negative-sampling table would silently
use the count of node i for slot i (a permuted noise distribution, which costs
link-prediction quality). Keys >= n_nodes never collide with slots;
`tests/test_node2vec_quality.py` guards this.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from models.errors import ModelError

TRAINERS = ("numba", "gensim")
NEGATIVES = ("window", "pair")   # numba: noise rows drawn per centre window or per (centre, context) pair


@dataclass(frozen=True)
class SkipGramConfig:
    """Word2Vec settings (gensim names in comments)."""

    dim: int = 128          # vector_size
    window: int = 10        # window: context nodes each side
    epochs: int = 1         # epochs over the walks
    negative: int = 5       # negative samples per positive pair
    sample: float = 1e-3    # sample: down-sampling of frequent nodes (gensim's and PecanPy's default)
    alpha: float = 0.025    # initial learning rate
    workers: int = 0        # threads; 0 = all cores. 1 makes training deterministic
    seed: int = 0
    corpus: str = "memory"  # gensim only: "memory" (iterable over the arrays) or "file" (corpus_file)
    trainer: str = "numba"  # "numba" (models/node2vec/sgns.py) or "gensim"
    negatives: str = "window"  # numba only: noise rows drawn per centre "window" or per "pair"

    def check(self) -> None:
        for name in ("dim", "window", "epochs", "negative"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"skip-gram {name} must be >= 1, got {getattr(self, name)}")
        if not (self.alpha > 0 and self.sample >= 0):
            raise ModelError(f"skip-gram alpha must be > 0 and sample >= 0, got {self.alpha}, {self.sample}")
        if self.trainer not in TRAINERS:
            raise ModelError(f"skip-gram trainer must be one of {TRAINERS}, got {self.trainer!r}")
        if self.negatives not in NEGATIVES:
            raise ModelError(f"skip-gram negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.corpus not in ("memory", "file"):
            raise ModelError(f"skip-gram corpus must be 'memory' or 'file', got {self.corpus!r}")


class WalkCorpus:
    """Restartable iterable of walks as lists of int node ids (padding dropped).

    walks: sequence of int arrays (n_walks_i, walk_length); iterated in order.
    """

    def __init__(self, walks: Sequence[np.ndarray], offset: int,
                 on_walks: Callable[[int], None] | None = None) -> None:
        self.walks = walks
        self.offset = np.int64(offset)  # token = node id + offset (see the module docstring)
        self.on_walks = on_walks        # called with each block's walk count once it is handed out

    def __iter__(self) -> Iterator[list[int]]:
        for block in self.walks:
            for row in block:
                if row[-1] < 0:
                    row = row[row >= 0]
                yield (row + self.offset).tolist()
            if self.on_walks is not None:
                self.on_walks(len(block))


def write_corpus_file(walks: Sequence[np.ndarray], path: str, rows_per_chunk: int = 65536) -> None:
    """Walks as text, one walk per line, ids separated by spaces (gensim's LineSentence)."""
    with open(path, "w") as fh:
        for block in walks:
            for lo in range(0, len(block), rows_per_chunk):
                lines = []
                for row in block[lo:lo + rows_per_chunk]:
                    if row[-1] < 0:
                        row = row[row >= 0]
                    lines.append(" ".join(map(str, row.tolist())))
                fh.write("\n".join(lines) + "\n")


def train_skipgram(walks: Sequence[np.ndarray], n_nodes: int, cfg: SkipGramConfig,
                   on_walks: Callable[[int], None] | None = None) -> np.ndarray:
    """Node vectors (n_nodes, dim) float32 from walks over dense ids 0..n_nodes-1.

    Nodes that never occur in a walk get a zero row. `on_walks(n)`: progress, called as
    training takes each block (gensim) or chunk (numba) of n walks, every epoch; not with
    gensim's file corpus.
    """
    cfg.check()
    if cfg.trainer == "numba":
        from models.node2vec.sgns import train_sgns

        walks = [w for w in walks if w.size]
        counts = np.zeros(n_nodes, np.int64)
        for block in walks:
            flat = np.asarray(block).reshape(-1)
            counts += np.bincount(flat[flat >= 0], minlength=n_nodes)
        return train_sgns(walks, n_nodes, counts, dim=cfg.dim, window=cfg.window, negative=cfg.negative,
                          epochs=cfg.epochs, alpha=cfg.alpha, sample=cfg.sample, seed=cfg.seed,
                          threads=cfg.workers, shared=cfg.negatives == "window", on_walks=on_walks)
    model, keys = fit_word2vec(walks, n_nodes, cfg, on_walks)
    out = np.zeros((n_nodes, cfg.dim), np.float32)
    out[keys] = model.wv.vectors
    return out


def walk_vocab(walks: Sequence[np.ndarray], n_nodes: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """What gensim's vocabulary pass finds, with numpy instead of a Python loop per token.

    Returns (nodes (V,) int64 in order of first occurrence, row-major over the blocks as the
    corpus yields them; their counts (V,) int64; walks (rows, padded or not); tokens).
    The order matters: gensim sorts the vocabulary by count with a non-stable argsort over
    this insertion order, so the same order gives the same model bit for bit. It is one
    bincount per block, where gensim's `build_vocab` loops over every token in Python.
    """
    counts = np.zeros(n_nodes, np.int64)
    first = np.full(n_nodes, -1, np.int64)     # position of the node's first token (-1: not yet)
    pos = rows = 0
    for block in walks:
        flat = np.asarray(block).reshape(-1)   # (rows x length,) row-major = corpus order
        rows += block.shape[0]
        ids = flat[flat >= 0]                  # padding is dropped, as WalkCorpus does
        counts += np.bincount(ids, minlength=n_nodes)
        new = first[ids] < 0                   # tokens of nodes not seen before this block
        if new.any():
            at = np.flatnonzero(new)
            nodes, i = np.unique(ids[at], return_index=True)
            first[nodes] = pos + at[i]
        pos += ids.size
    seen = np.flatnonzero(counts)
    order = seen[np.argsort(first[seen], kind="stable")]
    return order, counts[order], rows, pos


def fit_word2vec(walks: Sequence[np.ndarray], n_nodes: int, cfg: SkipGramConfig,
                 on_walks: Callable[[int], None] | None = None):
    """(gensim Word2Vec model, (vocab,) int64 dense node id of each vector row).

    Same model as `Word2Vec(corpus, ...)` (tested bit for bit with one worker), but the
    vocabulary comes from `walk_vocab` and training streams the corpus once.
    """
    from gensim.models import Word2Vec

    cfg.check()
    walks = [w for w in walks if w.size]
    if not walks:
        raise ModelError("no walks to train on")
    kw = dict(vector_size=cfg.dim, window=cfg.window, min_count=0, sg=1, hs=0, negative=cfg.negative,
              sample=cfg.sample, alpha=cfg.alpha, epochs=cfg.epochs, seed=cfg.seed,
              workers=cfg.workers or os.cpu_count() or 1)
    nodes, counts, n_walks, n_tokens = walk_vocab(walks, n_nodes)
    # gensim keys: the ids as text in a corpus file, id + n_nodes in memory (module docstring)
    keys = [str(k) for k in nodes.tolist()] if cfg.corpus == "file" else (nodes + n_nodes).tolist()
    model = Word2Vec(**kw)
    model.build_vocab_from_freq(dict(zip(keys, counts.tolist())), corpus_count=n_walks)
    model.corpus_total_words = n_tokens
    train = dict(total_examples=n_walks, total_words=n_tokens, epochs=model.epochs, start_alpha=model.alpha,
                 end_alpha=model.min_alpha, compute_loss=model.compute_loss)
    if cfg.corpus == "file":
        with tempfile.TemporaryDirectory(prefix="walks-") as d:
            path = os.path.join(d, "walks.txt")
            write_corpus_file(walks, path)
            model.train(corpus_file=path, **train)
        ids = np.asarray([int(k) for k in model.wv.index_to_key], np.int64)  # str keys from the file
    else:
        model.train(corpus_iterable=WalkCorpus(walks, offset=n_nodes, on_walks=on_walks), **train)
        ids = np.asarray(model.wv.index_to_key, np.int64) - n_nodes
    return model, ids
