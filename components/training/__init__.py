"""Trainer module code (TFX fingerprints this folder: keep only module code here)."""
