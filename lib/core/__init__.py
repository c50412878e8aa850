"""Foundations every layer above uses: the device `Engine`, checkpoint files, run folders,
pictures and progress text. They know nothing of families, training or notebooks."""
