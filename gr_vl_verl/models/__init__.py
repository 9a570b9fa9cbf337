"""Model families the guard can be trained from: what each needs from the pipeline (``families``) and which one a
checkpoint folder is (``detect``)."""
