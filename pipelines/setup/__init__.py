"""A job's setup: its config (and the sections' types), its input and dimension tables
inspected, and the plan of how it runs.
"""
