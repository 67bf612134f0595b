"""Hashed datasets on disk, and the row sources training and scoring read blocks from."""
