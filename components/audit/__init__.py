"""The lesion audit: does the model look at the tumour, and does its answer depend on it?"""
