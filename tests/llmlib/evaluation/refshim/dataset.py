"""Stand-in for llama3.1-8b's dataset.py (not among the reference files): the targets of cnn_eval.json,
read from its `output` column as the reference Dataset class does."""

import pandas as pd


class Dataset:
    def __init__(self, model_name=None, dataset_path=None, total_sample_count=13368, dtype="int64", **kwargs):
        data = pd.read_json(dataset_path)
        self.input = data["input"].tolist()
        self.targets = data["output"].tolist()
