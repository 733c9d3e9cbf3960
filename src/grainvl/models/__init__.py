"""Model families: shared layers, vision towers, text towers, X²-VLM and friends."""
