"""Causal-LM evaluation: the text corpus and its sliding windows (:mod:`.data`), perplexity and
next-token accuracy (:mod:`.metrics`)."""
