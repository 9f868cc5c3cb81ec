"""Data: corpora (``corpora``), tokenizers (``tokenizers``), the token cache that tokenizes each corpus once into a
memory-mapped file (``cache``), the train/val split (``prepare``), batches for the trainer (``batches``), the spec
checks that need the data (``checks``), and finetuning: datasets (``datasets``), their examples with -100 targets
(``tasks``) and their batches (``pairs``).

Only ``batches`` and ``pairs`` import torch.
"""

from harness.data.checks import check_data, validate_data
from harness.data.corpora import CorpusError, list_corpora, load_text
from harness.data.prepare import Prepared, prepare
from harness.data.tokenizers import Tokenizer, tokenizer_from_dict

__all__ = ["CorpusError", "Prepared", "Tokenizer", "check_data", "list_corpora", "load_text", "prepare", "tokenizer_from_dict", "validate_data"]
