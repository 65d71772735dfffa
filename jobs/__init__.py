"""Stages of the tag-recommendation system: one module per stage with main() and run(cfg).

Ray is imported inside the stages that use it, never at package import.
"""
