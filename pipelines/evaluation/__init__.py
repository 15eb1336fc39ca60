"""The evaluation stage: metrics on the validation split, and the explanations of every
model.
"""
