"""SQuAD v1.1 evaluation: data loading (:mod:`.data`) and official metrics (:mod:`.metrics`)."""
