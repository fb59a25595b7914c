"""Helpers the tests share that are no part of bnnctl: the tensor-core kernel's CPU model."""
