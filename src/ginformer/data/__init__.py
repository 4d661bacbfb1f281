"""Reading and tokenising data, for the tasks in `ginformer.tasks`. Import the submodule you need; nothing is
loaded here.

    rows.py       what every reader shares: bundled files, one JSONL reader, bad-row reports, hub loading
    protein.py    the protein secondary-structure set: rows, labels, split, majority baseline
    text.py       any text corpus: documents, position or document split, token ids memory-mapped, packed blocks
    instruct.py   instruction rows in TRL's shapes: templates, trained segments, truncation, the grouped split
    reasoning.py  the GSM8K and FOLIO presets: their rows, answer extraction, majority baselines
    tokenizer.py  the protein tokenizer, and the char and byte tokenizers of the text task
    synthetic.py  the generated tasks (MQAR, k-hop induction heads): their generators, tokenizers, accuracy
    batches.py    training examples' labels and the one collator
"""
