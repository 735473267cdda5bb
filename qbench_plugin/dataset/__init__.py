"""The dataset: the evaluated split and the model's label set (dataset.py), the embedded default
dataset and the small classifier trained from it (embedded.py), and the workload facts that turn
texts/s into FLOP/s, tokens per text and non-embedding parameters (workload.py).

(Named dataset, not data: qbench_plugin/data/ is the package data these modules read.)

May import: nothing
"""
