"""Measuring quality on your own data (`pengi-search eval`).

- `metrics`: the numbers (recall@k, mAP@10, top-k accuracy, confusion; BLEU, ROUGE-L, CIDEr-D and the tokenizer)
- `java_metrics`: METEOR and SPICE, run from pycocoevalcap's jars when Java is present
- `datasets`: captioned sets (Clotho and AudioCaps CSV layouts)
- `retrieval`, `captioning`, `classification`: scoring what a library holds, or a classifier's predictions
- `ties`: how far another order of tied results (files, captions, labels) would move R@k, accuracy and top-k
- `report`, `plots`: report.json, report.md, PNG figures, and the comparison of two reports

Nothing here indexes: the command line indexes a set first (with the indexer), then scores the library.
"""
