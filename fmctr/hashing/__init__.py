"""Hashing: chunks of raw rows in, sparse hashed rows (CSR) out; rare values mapped in one place."""
