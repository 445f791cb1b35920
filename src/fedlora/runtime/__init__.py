"""Runtimes that drive a federation: in-process simulation and Flower."""
