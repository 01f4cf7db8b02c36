"""Scores of a recovered prompt: how close its regenerated image and its text come to the reference.

One module per metric family. Each metric loads its real model by Hugging Face id (failing fast with
ModelUnavailableError when the weights cannot be had) and has a tiny random in-code build for tests;
every score it returns names the model that computed it.
"""
