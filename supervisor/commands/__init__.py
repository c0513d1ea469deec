"""One module per gpt2sup sub-command (thin click layers over the library modules)."""
