"""Task data: the protein secondary-structure set and its tokenizer (`protein`, `tokenizer`), and the
instruction sets for fine-tuning (`instruct`). Import the submodule you need; nothing is loaded here."""
