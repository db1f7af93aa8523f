"""Gallery search below the stages that use it: the faiss index over a gallery's embeddings and the
ranking of its identities. Matching runs it on enrolled galleries; evaluation's identification runs
it on held-out people."""
