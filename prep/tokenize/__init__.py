"""`prep tokenize`: records -> recipe -> token ids (and loss masks) -> Megatron or NanoGPT datasets."""
