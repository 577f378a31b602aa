"""Analyses of trained runs, each reachable from `cnnrnn analyze`: where multilabel runs go
wrong (`errors`); label embeddings and mistake severity will live here too."""
