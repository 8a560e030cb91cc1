"""The render engine: what a GPU worker (or ``farm render``) runs. Imports torch and diffusers.

Producer code must never import this package.
"""
