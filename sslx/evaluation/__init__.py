"""Evaluation of encoders, used inside pretraining and by the transfer jobs.

  features      frozen-encoder features of whole splits (one extractor for everyone)
  knn           weighted kNN classification of features
  linear_probe  L-BFGS logistic regression on features
  metrics       top-1 / top-5 accuracy
  transfer      loading the encoder of any checkpoint for a transfer job, and its results
"""
