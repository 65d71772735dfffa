"""Pure compute: image models and backends, node2vec, recommenders, BPR, scoring, metrics.

Importing this package needs no GPU, no Ray, no TensorRT and no faiss.
"""
