"""Analyses of trained runs, each reachable from `cnnrnn analyze`: where multilabel runs go
wrong (`errors`), label embeddings and their maps (`embeddings`), cost matrices and how they
compare (`costs`), and where each decoding step looks (`saliency`)."""
